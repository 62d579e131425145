"""Pure tensor functions: every loss takes tensors and returns tensors, and is tested by hand."""

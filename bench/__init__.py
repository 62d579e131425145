"""tunelab's benchmarks against TRL (and HF generate): `python -m bench [workload ...] [--quick]`, or `make bench`.

Benchmarks measure speed and memory; tests check behaviour. Nothing here runs in `make test`.
"""

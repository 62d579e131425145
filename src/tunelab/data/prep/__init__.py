"""Pre-training data at scale: clean, deduplicate and tokenise text, streaming.

    tunelab data clean raw/ --out clean/          # repair, normalise, Gopher/C4-style quality filters
    tunelab data dedup clean/ --out dedup/        # exact + MinHash-LSH near-duplicates
    tunelab data tokenize dedup/ --out tok/ --model smollm2-135m   # tokens.bin + meta.json
    tunelab pretrain data.train=tok/ ...          # fixed-length blocks read from the memory map

Modules: stream (reading, shards, progress, worker processes), clean, dedup, tokenize, config.
Kept light: each module imports its heavy libraries where it uses them.
"""

"""Human preference labelling: a small web service, quality statistics and export for `tunelab rm`.

    tunelab label serve examples/label/project.yaml    # assessors compare two answers in a browser
    tunelab label stats examples/label/project.yaml    # honeypots, consistency, position bias, agreement
    tunelab label export examples/label/project.yaml --out prefs.jsonl

Modules: project (PROJECT.yaml), pairs (the items; sample: answers sampled from models), queue (who
sees what, in which order), db (SQLite store), server (FastAPI app + static page), stats, export,
commands (what the command line prints).
"""

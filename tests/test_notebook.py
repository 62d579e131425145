"""examples/playbook.ipynb runs top to bottom (on a tiny model: the parameter cell is replaced)."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).parents[1] / "examples" / "playbook.ipynb"


def test_the_playbook_notebook_runs_on_a_tiny_model(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    params.source = (
        f'MODEL = "tiny:llama"\nOUT = "{tmp_path}"\nLIMIT = 2\nLORA_STEPS = 2\nRM_STEPS = 2\nN = 2\n'
    )
    src = str(Path(__file__).parents[1] / "src")  # the kernel imports this checkout's tunelab
    env = {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        client.execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "best of 2 right:" in text and "FROM ./model.gguf" in text
    assert (tmp_path / "gguf" / "model.gguf").is_file() and (tmp_path / "lora" / "final").is_dir()

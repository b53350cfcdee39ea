"""The notebooks run top to bottom in smoke mode (SOLV_NOTEBOOK_SMOKE=1), executed by nbclient
in a python3 kernel of this environment: notebooks/colab_tpu_train.ipynb trains, evaluates and
exports a tiny run; notebooks/inference.ipynb segments a synthetic mp4 with that export. Their
outputs are checked on disk (the files each notebook promises), independently of the kernel."""
import json
import os

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("colab_tpu_train.ipynb", "inference.ipynb")


def _execute(name: str, timeout: int = 300):
  book = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  NotebookClient(book, timeout=timeout, kernel_name="python3",
                 resources={"metadata": {"path": REPO}}).execute()
  return book


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_saved_without_outputs(name):
  book = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  nbformat.validate(book)
  code = [c for c in book.cells if c.cell_type == "code"]
  assert code and all(c.outputs == [] and c.execution_count is None for c in code)
  assert book.metadata.kernelspec.name == "python3"


def test_train_then_inference_notebooks_run_in_smoke_mode(tmp_path, monkeypatch):
  monkeypatch.setenv("SOLV_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("SOLV_NOTEBOOK_WORKDIR", str(tmp_path / "train"))
  _execute("colab_tpu_train.ipynb")
  run = tmp_path / "train" / "run"
  with open(run / "eval" / "results.json") as f:
    results = json.load(f)
  assert results["step"] == 2 and results["num_videos"] == 1
  assert -1.0 <= results["fg_ari"] <= 1.0 and 0.0 <= results["miou"] <= 1.0
  with np.load(run / "model.npz") as export:
    assert "__config__" in export.files
    assert any(k.startswith("encoder/") for k in export.files)

  monkeypatch.setenv("SOLV_NOTEBOOK_WORKDIR", str(tmp_path / "infer"))
  monkeypatch.setenv("SOLV_CHECKPOINT", str(run / "model.npz"))
  book = _execute("inference.ipynb")
  out = tmp_path / "infer" / "segmentation"
  with open(out / "summary.json") as f:
    summary = json.load(f)
  masks = sorted(os.listdir(out / "masks"))
  assert len(masks) == summary["input"]["num_frames"] == 8
  ids = np.stack([np.asarray(Image.open(out / "masks" / m)) for m in masks])
  assert ids.shape == (8, 64, 96)
  assert [o["id"] for o in summary["objects"]] == np.unique(ids).tolist()
  assert summary["model"]["checkpoint"] == str(run / "model.npz")
  # The figures were drawn: two matplotlib PNG outputs and the GIF.
  images = [o for c in book.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {}) or "image/gif" in o.get("data", {})]
  assert len(images) >= 3

"""tools/convert_dinov2.py on official .pth and HuggingFace safetensors (both namings)."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from solv_jax.models import dinov2
from tests.dinov2_reference import (TINY, hf_forward, hf_model, official_state_dict, rel_err)
from tools import convert_dinov2

TINY_REG = dict(TINY, num_registers=4)


@pytest.fixture(autouse=True)
def tiny_variants(monkeypatch):
  """Registers the tiny test variants by name so the CLI can be driven end to end."""
  monkeypatch.setitem(dinov2.VARIANTS, "tiny14", TINY)
  monkeypatch.setitem(dinov2.VARIANTS, "tiny14_reg", TINY_REG)


def _check(out_path, model, variant_name):
  variant, params = dinov2.load_params(str(out_path), expected_variant=variant_name)
  assert variant == variant_name
  images = np.random.default_rng(0).normal(size=(2, 56, 56, 3)).astype(np.float32)
  ref, _ = hf_forward(model, images)
  ours, _ = dinov2.DINOv2(variant).apply({"params": params}, jnp.asarray(images))
  assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("name", ["tiny14", "tiny14_reg"])
def test_official_pth(tmp_path, name):
  model = hf_model(dinov2.VARIANTS[name], seed=1)
  src = tmp_path / "dinov2_pretrain.pth"
  torch.save(official_state_dict(model), src)
  out = tmp_path / "p.npz"
  assert convert_dinov2.main(["--src", str(src), "--variant", name, "--out", str(out)]) == 0
  _check(out, model, name)


def test_huggingface_old_naming_from_save_pretrained(tmp_path):
  model = hf_model(TINY, seed=2)
  model.save_pretrained(tmp_path / "hf")  # on disk: attention.attention.query/...
  from safetensors.numpy import load_file
  keys = load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert any("attention.attention.query" in k for k in keys)
  out = tmp_path / "p.npz"
  assert convert_dinov2.main(["--src", str(tmp_path / "hf" / "model.safetensors"),
                              "--variant", "tiny14", "--out", str(out)]) == 0
  _check(out, model, "tiny14")


def test_huggingface_new_naming(tmp_path):
  model = hf_model(TINY_REG, seed=3)
  sd = {k: v.contiguous() for k, v in model.state_dict().items()}
  assert any("attention.q_proj" in k for k in sd)
  save_file(sd, str(tmp_path / "model.safetensors"))
  out = tmp_path / "p.npz"
  assert convert_dinov2.main(["--src", str(tmp_path / "model.safetensors"),
                              "--variant", "tiny14_reg", "--out", str(out)]) == 0
  _check(out, model, "tiny14_reg")


def _convert_expect_error(tmp_path, sd, variant, capsys):
  src = tmp_path / "bad.pth"
  torch.save(sd, src)
  out = tmp_path / "bad.npz"
  assert convert_dinov2.main(["--src", str(src), "--variant", variant, "--out", str(out)]) == 1
  assert not out.exists()
  return capsys.readouterr().err


def test_missing_key_is_named(tmp_path, capsys):
  sd = official_state_dict(hf_model(TINY))
  del sd["blocks.1.ls2.gamma"]
  err = _convert_expect_error(tmp_path, sd, "tiny14", capsys)
  assert "blocks.1.ls2.gamma" in err and "missing" in err


def test_unexpected_key_is_named(tmp_path, capsys):
  sd = official_state_dict(hf_model(TINY))
  sd["head.weight"] = torch.zeros(3)
  err = _convert_expect_error(tmp_path, sd, "tiny14", capsys)
  assert "head.weight" in err and "unexpected" in err


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, capsys):
  sd = official_state_dict(hf_model(dict(TINY, embed_dim=64)))
  err = _convert_expect_error(tmp_path, sd, "tiny14", capsys)
  assert "Shape mismatch" in err and "(64,)" in err and "(32,)" in err


def test_missing_source_file_says_how_to_get_it(tmp_path, capsys):
  rc = convert_dinov2.main(["--src", str(tmp_path / "nope.pth"), "--variant", "tiny14",
                            "--out", str(tmp_path / "o.npz")])
  err = capsys.readouterr().err
  assert rc == 1 and "nope.pth" in err and "dinov2_vitb14_pretrain.pth" in err


def test_load_params_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="convert_dinov2.py"):
    dinov2.load_params(str(tmp_path / "missing.npz"))
  model = hf_model(TINY)
  torch.save(official_state_dict(model), tmp_path / "a.pth")
  convert_dinov2.main(["--src", str(tmp_path / "a.pth"), "--variant", "tiny14",
                       "--out", str(tmp_path / "a.npz")])
  with pytest.raises(ValueError, match="holds variant 'tiny14' but the config asks for 'vitb14'"):
    dinov2.load_params(str(tmp_path / "a.npz"), expected_variant="vitb14")
  data = (tmp_path / "a.npz").read_bytes()
  (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="Cannot read DINOv2 params file"):
    dinov2.load_params(str(tmp_path / "trunc.npz"))

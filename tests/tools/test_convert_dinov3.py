"""tools/convert_dinov3.py on the official .pth layout and the transformers layouts (hub
safetensors and this version's save_pretrained), and its errors."""
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from solv_jax.models import dinov3
from tests.dinov3_reference import (TINY, TINY_SWIGLU, hf_forward, hf_model, hf_state_dict,
                                    official_state_dict, rel_err)
from tools import convert_dinov3


@pytest.fixture(autouse=True)
def tiny_variants(monkeypatch):
  """Registers the tiny test variants by name so the CLI can be driven end to end."""
  monkeypatch.setitem(dinov3.VARIANTS, "dinov3_tiny16", TINY)
  monkeypatch.setitem(dinov3.VARIANTS, "dinov3_tiny16plus", TINY_SWIGLU)


def _convert(src, variant, out):
  return convert_dinov3.main(["--src", str(src), "--variant", variant, "--out", str(out)])


def _check(out_path, model, variant_name):
  variant, params = dinov3.load_params(str(out_path), expected_variant=variant_name)
  assert variant == variant_name
  images = np.random.default_rng(0).normal(size=(2, 32, 64, 3)).astype(np.float32)
  ref, _ = hf_forward(model, images)
  ours, _ = dinov3.DINOv3(variant).apply({"params": params}, jnp.asarray(images))
  assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("name", ["dinov3_tiny16", "dinov3_tiny16plus"])
def test_official_pth(tmp_path, name):
  model = hf_model(dinov3.VARIANTS[name], seed=1)
  sd = official_state_dict(model)
  assert sd["blocks.0.attn.qkv.bias"][TINY["embed_dim"]:2 * TINY["embed_dim"]].abs().sum() > 0
  torch.save(sd, tmp_path / "dinov3_pretrain.pth")
  assert _convert(tmp_path / "dinov3_pretrain.pth", name, tmp_path / "p.npz") == 0
  _check(tmp_path / "p.npz", model, name)


@pytest.mark.parametrize("name", ["dinov3_tiny16", "dinov3_tiny16plus"])
def test_huggingface_hub_safetensors(tmp_path, name):
  model = hf_model(dinov3.VARIANTS[name], seed=2)
  sd = {k: torch.from_numpy(v) for k, v in hf_state_dict(model, hub_layout=True).items()}
  assert "layer.0.attention.q_proj.weight" in sd
  save_file(sd, str(tmp_path / "model.safetensors"))
  assert _convert(tmp_path / "model.safetensors", name, tmp_path / "p.npz") == 0
  _check(tmp_path / "p.npz", model, name)


def test_save_pretrained(tmp_path):
  model = hf_model(TINY, seed=3)
  model.save_pretrained(tmp_path / "hf")
  assert _convert(tmp_path / "hf" / "model.safetensors", "dinov3_tiny16", tmp_path / "p.npz") == 0
  _check(tmp_path / "p.npz", model, "dinov3_tiny16")


def _convert_expect_error(tmp_path, sd, variant, capsys):
  torch.save(sd, tmp_path / "bad.pth")
  out = tmp_path / "bad.npz"
  assert _convert(tmp_path / "bad.pth", variant, out) == 1
  assert not out.exists()
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  return err


def test_missing_key_is_named(tmp_path, capsys):
  sd = official_state_dict(hf_model(TINY))
  del sd["blocks.1.ls2.gamma"]
  err = _convert_expect_error(tmp_path, sd, "dinov3_tiny16", capsys)
  assert "blocks.1.ls2.gamma" in err and "missing" in err


def test_unexpected_key_is_named(tmp_path, capsys):
  sd = official_state_dict(hf_model(TINY))
  sd["head.weight"] = torch.zeros(3)
  err = _convert_expect_error(tmp_path, sd, "dinov3_tiny16", capsys)
  assert "head.weight" in err and "unexpected" in err


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, capsys):
  sd = official_state_dict(hf_model(dict(TINY, ffn_hidden=96)))
  err = _convert_expect_error(tmp_path, sd, "dinov3_tiny16", capsys)
  assert "Shape mismatch" in err and "blocks_0/mlp/fc1/" in err and "(96" in err and "(64" in err


def test_a_key_bias_without_its_mask_is_refused(tmp_path, capsys):
  sd = official_state_dict(hf_model(TINY))
  del sd["blocks.0.attn.qkv.bias_mask"]  # the random key bias would now count
  err = _convert_expect_error(tmp_path, sd, "dinov3_tiny16", capsys)
  assert "blocks.0.attn.qkv.bias has a non-zero key bias" in err


def test_other_rope_periods_are_refused(tmp_path, capsys):
  sd = official_state_dict(hf_model(TINY))
  sd["rope_embed.periods"] = sd["rope_embed.periods"] * 2
  err = _convert_expect_error(tmp_path, sd, "dinov3_tiny16", capsys)
  assert "rope_embed.periods" in err and "base 100" in err


def test_missing_source_file_says_how_to_get_it(tmp_path, capsys):
  rc = _convert(tmp_path / "nope.pth", "dinov3_vitb16", tmp_path / "o.npz")
  err = capsys.readouterr().err
  assert rc == 1 and "nope.pth" in err and "convert_dinov3.py" in err
  assert "facebook/dinov3-vitb16-pretrain-lvd1689m" in err and "DINOv3 License" in err
  assert "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth" in err
  assert not (tmp_path / "o.npz").exists()


def test_load_params_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="(?s)DINOv3 weights file not found.*convert_dinov3"):
    dinov3.load_params(str(tmp_path / "missing.npz"))
  torch.save(official_state_dict(hf_model(TINY)), tmp_path / "a.pth")
  assert _convert(tmp_path / "a.pth", "dinov3_tiny16", tmp_path / "a.npz") == 0
  with pytest.raises(ValueError, match="holds variant 'dinov3_tiny16' but the config asks for "
                                       "'dinov3_vitb16'"):
    dinov3.load_params(str(tmp_path / "a.npz"), expected_variant="dinov3_vitb16")
  data = (tmp_path / "a.npz").read_bytes()
  (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="Cannot read DINOv3 params file"):
    dinov3.load_params(str(tmp_path / "trunc.npz"))


def test_runs_as_a_script_from_the_repository_root(tmp_path):
  out = subprocess.run([sys.executable, "tools/convert_dinov3.py", "--src",
                        str(tmp_path / "none.pth"), "--variant", "dinov3_vits16", "--out",
                        str(tmp_path / "o.npz")], capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and out.stderr.startswith("error: cannot convert")

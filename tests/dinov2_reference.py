"""Independent DINOv2 references for the tests: HuggingFace models in torch, random weights."""
from __future__ import annotations

import numpy as np
import torch
from transformers import (Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig,
                          Dinov2WithRegistersModel)

# A tiny variant in our format, and the HuggingFace config that builds the same network.
TINY = dict(embed_dim=32, depth=2, num_heads=2, ffn="mlp", num_registers=0, pretrain_grid=4)


def hf_model(variant: dict, seed: int = 0, image_size: int | None = None):
  """Random HF DINOv2 matching a variant dict; LayerScale and LayerNorms randomised too."""
  torch.manual_seed(seed)
  grid = variant.get("pretrain_grid", 37)
  kw = dict(hidden_size=variant["embed_dim"], num_hidden_layers=variant["depth"],
            num_attention_heads=variant["num_heads"], image_size=image_size or grid * 14,
            patch_size=14, use_swiglu_ffn=variant["ffn"] == "swiglu", layer_norm_eps=1e-6)
  if variant["num_registers"]:
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        num_register_tokens=variant["num_registers"], **kw))
  else:
    model = Dinov2Model(Dinov2Config(**kw))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lambda1" in name or "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.5 * torch.randn_like(p))
      elif name.endswith("bias") or "token" in name or "position" in name:
        p.copy_(0.1 * torch.randn_like(p))
  return model.eval()


def hf_state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def official_state_dict(model) -> dict[str, torch.Tensor]:
  """The facebookresearch/dinov2 layout of an HF model's weights (what *_pretrain.pth holds)."""
  hf = model.state_dict()
  sd = {"cls_token": hf["embeddings.cls_token"], "mask_token": hf["embeddings.mask_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"]}
  if "embeddings.register_tokens" in hf:
    sd["register_tokens"] = hf["embeddings.register_tokens"]
  for i in range(len(model.encoder.layer)):
    h, o = f"encoder.layer.{i}.", f"blocks.{i}."
    for t in ("weight", "bias"):
      sd[o + f"attn.qkv.{t}"] = torch.cat([hf[h + f"attention.{x}_proj.{t}"] for x in "qkv"])
      sd[o + f"attn.proj.{t}"] = hf[h + f"attention.o_proj.{t}"]
      sd[o + f"norm1.{t}"] = hf[h + f"norm1.{t}"]
      sd[o + f"norm2.{t}"] = hf[h + f"norm2.{t}"]
      if h + "mlp.fc1.weight" in hf:
        sd[o + f"mlp.fc1.{t}"] = hf[h + f"mlp.fc1.{t}"]
        sd[o + f"mlp.fc2.{t}"] = hf[h + f"mlp.fc2.{t}"]
      else:
        sd[o + f"mlp.w12.{t}"] = torch.cat([hf[h + f"mlp.gate_proj.{t}"],
                                            hf[h + f"mlp.up_proj.{t}"]])
        sd[o + f"mlp.w3.{t}"] = hf[h + f"mlp.down_proj.{t}"]
    sd[o + "ls1.gamma"] = hf[h + "layer_scale1.lambda1"]
    sd[o + "ls2.gamma"] = hf[h + "layer_scale2.lambda1"]
  return {k: v.clone() for k, v in sd.items()}


def hf_forward(model, images_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(pre-norm, normed) patch tokens of an HF model: (B, N, D) each."""
  skip = 1 + getattr(model.config, "num_register_tokens", 0)
  x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    out = model(pixel_values=x, output_hidden_states=True)
  return (out.hidden_states[-1][:, skip:].numpy(), out.last_hidden_state[:, skip:].numpy())


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())

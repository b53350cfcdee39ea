"""Independent DINOv3 references for the tests: transformers' DINOv3ViTModel in torch with every
parameter perturbed, its token-dropped run, and the official facebookresearch/dinov3 layout of
its weights."""
from __future__ import annotations

import numpy as np
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

# Tiny variants in our format (head width 16: four RoPE frequencies per axis).
TINY = dict(embed_dim=32, depth=2, num_heads=2, ffn="mlp", ffn_hidden=64, num_registers=4)
TINY_SWIGLU = dict(TINY, ffn="swiglu", ffn_hidden=48)


def hf_model(variant: dict, seed: int = 0):
  """A random DINOv3ViTModel matching a variant dict, in eval mode (no RoPE augmentation).
  Every parameter is perturbed away from its initial value: biases, tokens, LayerScale and
  LayerNorm scales too."""
  torch.manual_seed(seed)
  config = DINOv3ViTConfig(
      hidden_size=variant["embed_dim"], num_hidden_layers=variant["depth"],
      num_attention_heads=variant["num_heads"], intermediate_size=variant["ffn_hidden"],
      num_register_tokens=variant["num_registers"], patch_size=16, layer_norm_eps=1e-5,
      use_gated_mlp=variant["ffn"] == "swiglu",
      hidden_act="silu" if variant["ffn"] == "swiglu" else "gelu")
  model = DINOv3ViTModel(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lambda1" in name or "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.5 * torch.randn_like(p))
      elif name.endswith("bias") or "token" in name:
        p.add_(0.1 * torch.randn_like(p))
      else:
        # weights: large enough that attention is far from uniform, so RoPE matters
        fan_in = p[0].numel() if p.dim() > 1 else p.numel()
        p.add_(0.5 / fan_in ** 0.5 * torch.randn_like(p))
  return model.eval()


def hf_state_dict(model, hub_layout: bool = True) -> dict[str, np.ndarray]:
  """The model's weights as numpy; `layer.N.` keys as on the hub (transformers 4.56's save),
  or `model.layer.N.` as this transformers version names them."""
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  if hub_layout:
    sd = {k[len("model."):] if k.startswith("model.layer.") else k: v for k, v in sd.items()}
  return sd


def official_state_dict(model) -> dict[str, torch.Tensor]:
  """The facebookresearch/dinov3 layout of a transformers model's weights, as a released
  `dinov3_*_pretrain_*.pth` holds it: fused qkv with a key bias (random here) zeroed by
  `bias_mask`, `storage_tokens`, mask_token (1, D), `rope_embed.periods`, SwiGLU as w1/w2/w3."""
  hf = model.state_dict()
  cfg = model.config
  d = cfg.hidden_size
  hd = d // cfg.num_attention_heads
  periods = cfg.rope_theta ** (2 * torch.arange(hd // 4, dtype=torch.float32) / (hd // 2))
  sd = {"cls_token": hf["embeddings.cls_token"],
        "mask_token": hf["embeddings.mask_token"].reshape(1, d),
        "storage_tokens": hf["embeddings.register_tokens"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.bias"],
        "rope_embed.periods": periods,
        "norm.weight": hf["norm.weight"], "norm.bias": hf["norm.bias"]}
  gen = torch.Generator().manual_seed(7)
  for i in range(cfg.num_hidden_layers):
    h, o = f"model.layer.{i}.", f"blocks.{i}."
    sd[o + "attn.qkv.weight"] = torch.cat([hf[h + f"attention.{x}_proj.weight"] for x in "qkv"])
    sd[o + "attn.qkv.bias"] = torch.cat([hf[h + "attention.q_proj.bias"],
                                         torch.randn(d, generator=gen),  # masked out
                                         hf[h + "attention.v_proj.bias"]])
    sd[o + "attn.qkv.bias_mask"] = torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)])
    for t in ("weight", "bias"):
      sd[o + f"attn.proj.{t}"] = hf[h + f"attention.o_proj.{t}"]
      sd[o + f"norm1.{t}"] = hf[h + f"norm1.{t}"]
      sd[o + f"norm2.{t}"] = hf[h + f"norm2.{t}"]
      if cfg.use_gated_mlp:
        sd[o + f"mlp.w1.{t}"] = hf[h + f"mlp.gate_proj.{t}"]
        sd[o + f"mlp.w2.{t}"] = hf[h + f"mlp.up_proj.{t}"]
        sd[o + f"mlp.w3.{t}"] = hf[h + f"mlp.down_proj.{t}"]
      else:
        sd[o + f"mlp.fc1.{t}"] = hf[h + f"mlp.up_proj.{t}"]
        sd[o + f"mlp.fc2.{t}"] = hf[h + f"mlp.down_proj.{t}"]
    sd[o + "ls1.gamma"] = hf[h + "layer_scale1.lambda1"]
    sd[o + "ls2.gamma"] = hf[h + "layer_scale2.lambda1"]
  return {k: v.clone() for k, v in sd.items()}


def hf_forward(model, images_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(pre-norm, normed) patch tokens of the full model: (B, N, D) each."""
  skip = 1 + model.config.num_register_tokens
  x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    out = model(pixel_values=x, output_hidden_states=True)
  return out.hidden_states[-1][:, skip:].numpy(), out.last_hidden_state[:, skip:].numpy()


def hf_forward_kept(model, images_nhwc: np.ndarray, keep_idx, num_blocks: int = 0
                    ) -> np.ndarray:
  """transformers' own modules run on just the kept patch tokens of each image, each with the
  rotary cos/sin of its own patch (DINOv3ViTRopePositionEmbedding's, gathered): the pre-norm
  patch tokens (B, N', D) after num_blocks blocks (0: all)."""
  skip = 1 + model.config.num_register_tokens
  x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
  idx = torch.from_numpy(np.array(keep_idx)).long()  # (B, N')
  with torch.no_grad():
    tokens = model.embeddings(x)  # (B, 1 + R + N, D)
    cos, sin = model.rope_embeddings(x)  # (N, Dh) each
    patches = torch.gather(tokens[:, skip:], 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
    hidden = torch.cat([tokens[:, :skip], patches], 1)
    rope = (cos[idx][:, None], sin[idx][:, None])  # (B, 1, N', Dh): broadcast over heads
    layers = model.model.layer[:num_blocks or len(model.model.layer)]
    for layer in layers:
      hidden = layer(hidden, position_embeddings=rope)
  return hidden[:, skip:].numpy()


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


"""The authors' PyTorch training step, re-created for timing beside tools/benchmark.py (issue 24).

What gorkaydemir/SOLV's train.py runs per batch (`train_epoch`), at their shapes, with random
weights: DINOv2 ViT-B/14 under no_grad on the B middle frames with every token (the targets)
and on the B x F frames with token drop (sorted random kept indices plus CLS, then the
blocks), SOLV's forward (invariant slot attention with 3 + 1 iterations, the 3-layer
nn.TransformerEncoder over each slot's frames with a padding mask, agglomerative merging on
the host with sklearn, the MLP broadcast decoder), MSE, backward, clip_grad_norm_(1.0) and
Adam. The structure is written from the paper, docs/METHOD.md and the authors' module layout;
this is not their code. DINOv2's blocks are the official layout (one packed qkv Linear,
F.scaled_dot_product_attention, LayerScale, GELU MLP); float32, as tools/benchmark.py runs
solv_jax on the CPU (the authors' GPU step encodes under fp16 autocast).

  python tools/bench_authors.py --batch_size=2 --steps=3 --what=parts,step

Prints one JSON line per measurement, in the part names of `benchmark.py --what=parts`.
"""
import argparse
import json
import statistics

import numpy as np
import torch
import torch.nn.functional as F
from benchmark import timed  # tools/benchmark.py: the same timing loop as solv_jax's side
from sklearn.cluster import AgglomerativeClustering
from torch import nn

PATCH, DIM, DEPTH, HEADS, PRETRAIN_GRID = 14, 768, 12, 12, 37


class Block(nn.Module):
  def __init__(self):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(DIM, eps=1e-6), nn.LayerNorm(DIM, eps=1e-6)
    self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
    self.fc1, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)
    self.ls1, self.ls2 = nn.Parameter(torch.full((DIM,), 1e-5)), nn.Parameter(
        torch.full((DIM,), 1e-5))

  def forward(self, x):
    b, n, _ = x.shape
    q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, DIM)
    x = x + self.ls1 * self.proj(a)
    return x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class DINOv2(nn.Module):
  def __init__(self):
    super().__init__()
    self.patch_embed = nn.Conv2d(3, DIM, PATCH, PATCH)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
    self.pos_embed = nn.Parameter(torch.randn(1, 1 + PRETRAIN_GRID ** 2, DIM) * 0.02)
    self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))

  def prepare_tokens(self, x):  # (B, 3, H, W) -> (B, 1 + N, D), position embedding resized
    b, _, h, w = x.shape
    x = self.patch_embed(x).flatten(2).transpose(1, 2)
    grid = self.pos_embed[:, 1:].reshape(1, PRETRAIN_GRID, PRETRAIN_GRID, DIM).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h // PATCH, w // PATCH), mode="bicubic",
                         antialias=False).permute(0, 2, 3, 1).reshape(1, -1, DIM)
    pos = torch.cat([self.pos_embed[:, :1], grid], 1)
    return torch.cat([self.cls_token.expand(b, -1, -1), x], 1) + pos

  @torch.no_grad()
  def forward(self, frames, drop_ratio=0.0):  # (B, 3, H, W) -> (B, N', D), kept indices
    x = self.prepare_tokens(frames)
    b, n = x.shape[0], x.shape[1] - 1
    if drop_ratio:
      kept = int(n * (1.0 - drop_ratio))
      idx = torch.stack([torch.randperm(n)[:kept] for _ in range(b)]).sort(-1)[0]
      x = torch.cat([x[:, :1], torch.gather(x[:, 1:], 1, idx[..., None].expand(-1, -1, DIM))], 1)
    else:
      idx = torch.arange(n).expand(b, n)
    for blk in self.blocks:
      x = blk(x)
    return x[:, 1:], idx


class SlotMLP(nn.Module):  # pre-norm residual MLP, dropout on the branch's output
  def __init__(self, d):
    super().__init__()
    self.norm, self.l1, self.l2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
    self.drop = nn.Dropout(0.1)

  def forward(self, x):
    return x + self.drop(self.l2(F.relu(self.l1(self.norm(x)))))


class SpatialBinding(nn.Module):
  """Invariant slot attention (docs/METHOD.md §2): iters + 1 attention passes, the last without
  update."""

  def __init__(self, grid_hw, k=8, d=128, iters=3, sigma=5.0):
    super().__init__()
    self.k, self.d, self.iters, self.sigma = k, d, iters, sigma
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid_hw[0]), torch.linspace(-1, 1, grid_hw[1]),
                            indexing="ij")
    self.abs_grid = nn.Parameter(torch.stack([xs, ys], -1).reshape(1, 1, -1, 2))
    self.h, self.g = nn.Linear(2, d), nn.Linear(2, d)
    self.slots = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, k, d)))
    self.S_s = nn.Parameter(torch.randn(1, k, 1, 2) * 0.02)
    self.S_p = nn.Parameter(torch.randn(1, k, 1, 2) * 0.02)
    self.Q, self.K, self.V = (nn.Linear(d, d, bias=False) for _ in range(3))
    self.norm, self.gru, self.mlp = nn.LayerNorm(d), nn.GRUCell(d, d), SlotMLP(d)
    self.f = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
    self.initial_mlp = nn.Sequential(nn.LayerNorm(DIM), nn.Linear(DIM, DIM), nn.ReLU(),
                                     nn.Linear(DIM, d), nn.LayerNorm(d))
    self.final_layer = nn.Linear(d, d)

  def grid_of(self, idx):  # (B, N') kept indices -> (B, 1, N', 2)
    return self.abs_grid[0, 0][idx][:, None]

  def forward(self, feats, idx):  # (B*F, N', D), (B*F, N') -> slots (B*F, K, d), attn
    b, n, _ = feats.shape
    # Expanded to every slot before K and V, as the authors do (K x the projections' work).
    inputs = self.initial_mlp(feats)[:, None].expand(b, self.k, n, self.d)
    grid = self.grid_of(idx)
    slots = self.slots.expand(b, -1, -1)
    s_s, s_p = self.S_s.expand(b, -1, -1, -1), self.S_p.expand(b, -1, -1, -1)
    for t in range(self.iters + 1):
      prev = slots
      rel = self.g((grid - s_p) / (s_s * self.sigma))  # (B*F, K, N', d)
      k, v = self.f(self.K(inputs) + rel), self.f(self.V(inputs) + rel)
      q = self.Q(self.norm(slots))
      attn = torch.einsum("bkd,bknd->bkn", q, k).mul(self.d ** -0.5).softmax(1) + 1e-8
      attn = attn / attn.sum(-1, keepdim=True)
      updates = torch.einsum("bknd,bkn->bkd", v, attn)
      s_p = torch.einsum("bqnc,bkn->bkc", grid, attn)[:, :, None]
      s_s = torch.einsum("bknc,bkn->bkc", (grid - s_p) ** 2, attn).sqrt()[:, :, None]
      if t < self.iters:
        slots = self.gru(updates.reshape(-1, self.d), prev.reshape(-1, self.d))
        slots = self.mlp(slots.reshape(b, self.k, self.d))
    return self.final_layer(slots), attn


class AuthorsSOLV(nn.Module):
  def __init__(self, grid_hw, k=8, d=128, num_frames=5, merge_threshold=0.12):
    super().__init__()
    self.k, self.d, self.f, self.n_tokens = k, d, num_frames, grid_hw[0] * grid_hw[1]
    self.threshold = merge_threshold
    self.spatial = SpatialBinding(grid_hw, k, d)
    layer = nn.TransformerEncoderLayer(d, nhead=8, dim_feedforward=4 * d, batch_first=True)
    self.temporal = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    self.pos_temporal = nn.Parameter(torch.randn(1, num_frames, 1, d) * 0.02)
    self.pos_dec = nn.Parameter(torch.randn(1, self.n_tokens, d) * 0.02)
    self.decoder = nn.Sequential(nn.Linear(d, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                 nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                                 nn.ReLU(), nn.Linear(1024, DIM + 1))

  def merge(self, slots, attn):  # agglomerative clustering of each sample's slots, on the host
    b = slots.shape[0]
    labels = np.zeros((b, self.k), np.int64)
    for i, s in enumerate(slots.detach().numpy()):
      ac = AgglomerativeClustering(n_clusters=None, metric="cosine", compute_full_tree=True,
                                   distance_threshold=self.threshold, linkage="complete").fit(s)
      labels[i] = ac.labels_ if ac.labels_.max() > 1 else np.arange(self.k)
    assign = torch.eye(self.k)[torch.from_numpy(labels)].transpose(1, 2)  # (B, K, K)
    counts = assign.sum(-1, keepdim=True)
    slots = torch.einsum("bij,bjd->bid", assign, slots) / (counts + 1e-8)
    attn = torch.einsum("bij,bjn->bin", assign, attn) + 1e-8
    return slots, attn / attn.sum(-1, keepdim=True), (counts[..., 0] > 0).sum(-1)

  def forward(self, feats, frame_mask, idx):  # (B*F, N', D), (B, F), (B*F, N')
    b = frame_mask.shape[0]
    slots, attn = self.spatial(feats, idx)
    attn = attn.reshape(b, self.f, self.k, -1)[:, self.f // 2]
    slots = slots.reshape(b, self.f, self.k, self.d) + self.pos_temporal
    slots = slots.permute(0, 2, 1, 3).reshape(b * self.k, self.f, self.d)
    pad = (~frame_mask.bool()).repeat_interleave(self.k, 0)
    slots = self.temporal(slots, src_key_padding_mask=pad).reshape(b, self.k, self.f, self.d)
    slots, attn, counts = self.merge(slots[:, :, self.f // 2], attn)
    # The decoder input: each slot broadcast, plus the positional code and the slot-relative
    # grid of every token (the middle frame's attention moments).
    grid = self.spatial.abs_grid[0, 0]  # (N, 2)
    mid_grid = self.spatial.grid_of(idx.reshape(b, self.f, -1)[:, self.f // 2])
    s_p = torch.einsum("bqnc,bkn->bkc", mid_grid, attn)[:, :, None]
    s_s = torch.einsum("bknc,bkn->bkc", (mid_grid - s_p) ** 2, attn).sqrt()[:, :, None]
    rel = self.spatial.h((grid[None, None] - s_p) / (s_s * self.spatial.sigma))  # (B, K, N, d)
    out = self.decoder(slots[:, :, None] + self.pos_dec[:, None] + rel)  # (B, K, N, D + 1)
    recon = []
    for i in range(b):  # softmax over the sample's remaining slots only
      n = int(counts[i])
      alpha = out[i, :n, :, DIM:].softmax(0)
      recon.append((out[i, :n, :, :DIM] * alpha).sum(0))
    return torch.stack(recon)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--resolution", type=int, nargs=2, default=(336, 504))
  parser.add_argument("--token_drop", type=float, default=0.5)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
  parser.add_argument("--what", default="parts,step")
  args = parser.parse_args(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  b, f, (h, w) = args.batch_size, 5, args.resolution
  encoder, model = DINOv2().eval(), AuthorsSOLV((h // PATCH, w // PATCH)).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
  frames = torch.randn(b, f, 3, h, w)
  frame_mask = torch.ones(b, f)
  frame_mask[0, 0] = 0  # one missing frame, as at a video's start
  base = {"framework": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
          "batch_size": b, "resolution": [h, w], "token_drop": args.token_drop}

  def target():
    return encoder(frames[:, f // 2])[0]

  def dropped():
    return encoder(frames.flatten(0, 1), args.token_drop)

  def step():
    tgt, (feats, idx) = target(), dropped()
    loss = F.mse_loss(model(feats, frame_mask, idx), tgt)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  records = []
  what = args.what.split(",")
  if "parts" in what:
    tgt, (feats, idx) = target(), dropped()

    def forward():
      return F.mse_loss(model(feats, frame_mask, idx), tgt)

    def forward_backward_optimizer():
      loss = forward()
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()

    seconds = {}
    for name, fn in (("encoder_target", target), ("encoder_dropped", dropped),
                     ("trainable_forward", forward),
                     ("forward_backward_optimizer", forward_backward_optimizer)):
      fn()  # warm-up
      seconds[name] = statistics.median(timed(fn, args.steps))
    seconds["backward_and_optimizer"] = (seconds.pop("forward_backward_optimizer")
                                         - seconds["trainable_forward"])
    total = sum(seconds.values())
    for name, s in seconds.items():
      records.append({**base, "what": "part", "part": name, "seconds": s, "share": s / total})
  if "step" in what:
    step()  # warm-up
    times = timed(step, args.steps)
    records.append({**base, "what": "train_step", "step_seconds": statistics.median(times),
                    "step_seconds_all": times})
  for r in records:
    print(json.dumps(r), flush=True)
  return records


if __name__ == "__main__":
  main()

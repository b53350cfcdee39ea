"""Compares a solv_jax initialisation with a sample of torch's own initialiser (docs/METHOD.md §6).

Both samples are seeded, so each comparison is deterministic. The distributions must agree
(two-sample Kolmogorov-Smirnov), and so must the standard deviation and, for the uniform
initialisers, the range: a scale off by sqrt(3) (Flax's lecun-normal against torch's
U(+-1/sqrt(fan_in))) or zeros against U(+-1/sqrt(fan_in)) fail all three.
"""
import numpy as np
import torch
from scipy import stats


def flat(x) -> np.ndarray:
  if isinstance(x, torch.Tensor):
    x = x.detach().numpy()
  return np.asarray(x, np.float64).reshape(-1)


def assert_like_torch(ours, theirs, name: str, uniform: bool = True) -> None:
  """ours: a solv_jax param (or several, concatenated); theirs: torch's, the same size."""
  ours, theirs = flat(ours), flat(theirs)
  assert ours.size == theirs.size, (name, ours.size, theirs.size)
  ks = stats.ks_2samp(ours, theirs)
  assert ks.pvalue > 1e-3, f"{name}: not torch's distribution (KS p = {ks.pvalue:.2g})"
  rtol = 3.0 / np.sqrt(ours.size) + 0.01  # ~4 standard errors of a std or a range estimate
  np.testing.assert_allclose(ours.std(), theirs.std(), rtol=rtol, err_msg=f"{name}: std")
  if uniform:  # U(-b, b): both samples' largest |x| close to b
    np.testing.assert_allclose(np.abs(ours).max(), np.abs(theirs).max(), rtol=rtol,
                               err_msg=f"{name}: range")

"""Float64 NumPy references written from the papers' equations (DESIGN.md).

These deliberately share no code with normopt: block membership is decided
from the leaf paths as strings, and every optimizer is a plain loop.
"""

import jax
import numpy as np


def flat(tree):
  """[(path string, float64 array)] in JAX's flattening order."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out.append((jax.tree_util.keystr(path), np.asarray(leaf, np.float64)))
  return out


def parent(path):
  """Parent path string: drop the last key (and an NNX '.value' wrapper)."""
  if path.endswith(".value"):
    path = path[: -len(".value")]
  return path[: path.rindex("[")]


def block_norms(leaves, blocks):
  """Per leaf, an array broadcastable to it holding its block's norm."""
  if blocks == "unit":
    out = []
    for _, x in leaves:
      if x.ndim >= 2:
        out.append(np.sqrt(np.sum(x**2, axis=tuple(range(x.ndim - 1)), keepdims=True)))
      else:
        out.append(np.sqrt(np.sum(x**2)))
    return out
  if blocks == "leaf":
    keys = list(range(len(leaves)))
  elif blocks == "layer":
    keys = [parent(p) for p, _ in leaves]
  elif blocks == "global":
    keys = [0] * len(leaves)
  else:
    raise ValueError(blocks)
  sq = {}
  for k, (_, x) in zip(keys, leaves, strict=True):
    sq[k] = sq.get(k, 0.0) + np.sum(x**2)
  return [np.sqrt(sq[k]) for k in keys]


def normalize(leaves, blocks, eps=1e-12):
  norms = block_norms(leaves, blocks)
  return [x / np.maximum(n, eps) for (_, x), n in zip(leaves, norms, strict=True)]


def ngadap(g_leaves, w_leaves, blocks, alpha, min_param_norm=0.0, eps=1e-12):
  """BNG's NG_adap: alpha ‖w_b‖ g_b/‖g_b‖; an all-zero block uses 1 for ‖w_b‖."""
  gn = block_norms(g_leaves, blocks)
  wn = block_norms(w_leaves, blocks)
  r = [np.where(w > 0, np.maximum(w, min_param_norm), 1.0) for w in wn]
  return [alpha * rb * x / np.maximum(n, eps)
          for (_, x), n, rb in zip(g_leaves, gn, r, strict=True)]


def clip(leaves, blocks, max_norm):
  norms = block_norms(leaves, blocks)
  return [x * np.minimum(1.0, max_norm / n) for (_, x), n in zip(leaves, norms, strict=True)]


class SGDM:
  def __init__(self, lr, momentum, nesterov=False):
    self.lr, self.mu, self.nesterov, self.m = lr, momentum, nesterov, None

  def __call__(self, g):
    if self.m is None:
      self.m = [np.zeros_like(x) for x in g]
    self.m = [self.mu * m + x for m, x in zip(self.m, g, strict=True)]
    d = [x + self.mu * m for m, x in zip(self.m, g, strict=True)] if self.nesterov else self.m
    return [-self.lr * x for x in d]


class Adam:
  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
    self.m = self.v = None
    self.t = 0

  def __call__(self, g):
    if self.m is None:
      self.m = [np.zeros_like(x) for x in g]
      self.v = [np.zeros_like(x) for x in g]
    self.t += 1
    self.m = [self.b1 * m + (1 - self.b1) * x for m, x in zip(self.m, g, strict=True)]
    self.v = [self.b2 * v + (1 - self.b2) * x**2 for v, x in zip(self.v, g, strict=True)]
    mh = [m / (1 - self.b1**self.t) for m in self.m]
    vh = [v / (1 - self.b2**self.t) for v in self.v]
    return [-self.lr * m / (np.sqrt(v) + self.eps) for m, v in zip(mh, vh, strict=True)]


class AdaGrad:
  """optax's AdaGrad: a ← a + g²; u = −η g / sqrt(a + eps)."""

  def __init__(self, lr, initial_accumulator_value=0.1, eps=1e-7):
    self.lr, self.a0, self.eps, self.a = lr, initial_accumulator_value, eps, None

  def __call__(self, g):
    if self.a is None:
      self.a = [np.full_like(x, self.a0) for x in g]
    self.a = [a + x**2 for a, x in zip(self.a, g, strict=True)]
    return [-self.lr * x / np.sqrt(a + self.eps) for a, x in zip(self.a, g, strict=True)]


class AdaGradBNG:
  """BNG appendix Algorithm 2."""

  def __init__(self, lr, blocks, delta=1e-8):
    self.lr, self.blocks, self.delta, self.s = lr, blocks, delta, None

  def __call__(self, g_leaves):
    norms = block_norms(g_leaves, self.blocks)
    ghat = [x / n for (_, x), n in zip(g_leaves, norms, strict=True)]
    if self.s is None:
      self.s = [np.zeros_like(x) for x in ghat]
    self.s = [s + x**2 for s, x in zip(self.s, ghat, strict=True)]
    return [
        -self.lr * n * gh / (self.delta + np.sqrt(s))
        for gh, n, s in zip(ghat, norms, self.s, strict=True)
    ]

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


# --------------------------------------------------------------------------
# The Muon family (DESIGN §9): Muon, NorMuon and AdaMuon on each leaf's
# matrices, Adam on the others. A leaf's layout is given as plain axes
# ``(reduction, output, batch)`` of the full leaf (None: an Adam leaf).

MUON_COEFFS = (3.4445, -4.7750, 2.0315)


def to_matrices(x, axes):
  """``x`` as ``(B, m, n)``: batch axes, then reduction (rows), output (columns)."""
  red, out, batch = axes
  size = lambda a: int(np.prod([x.shape[i] for i in a]))
  return np.transpose(x, batch + red + out).reshape(size(batch), size(red), size(out))


def from_matrices(y, shape, axes):
  red, out, batch = axes
  perm = batch + red + out
  return np.transpose(y.reshape([shape[i] for i in perm]), np.argsort(perm))


def newton_schulz(x, coeffs=MUON_COEFFS, steps=5, eps=1e-8):
  """One matrix: ``X/(‖X‖_F + eps)``, then ``X ← aX + b(XXᵀ)X + c(XXᵀ)²X`` on
  the wide orientation."""
  wide = x.shape[0] <= x.shape[1]
  x = x if wide else x.T
  x = x / (np.linalg.norm(x) + eps)
  for a, b, c in [coeffs] * steps:
    g = x @ x.T
    x = a * x + b * g @ x + c * g @ g @ x
  return x if wide else x.T


class MuonFamily:
  """``kind``: "muon", "normuon" or "adamuon"; updates for a list of float64 leaves.

  Muon and NorMuon: m_t = β m + (1−β) g, Nesterov direction
  β m_t/(1−β^{t+1}) + (1−β) g/(1−β^t); O = NS(direction) per matrix;
  Muon: O·⟨d, O⟩ if adaptive, then √max(1, n/m) or r·√max(m, n).
  NorMuon: v_j ← b2 v_j + (1−b2) mean_i O_ij², Ô = O/(√v + eps_unit),
  Ô·‖O‖/(‖Ô‖ + eps_unit), then the width scale.
  AdaMuon: m ← b1 m + (1−b1) g; O = NS(sign(m)) (or NS(m)); v ← b2 v + (1−b2) O²;
  Ô = O/(√(v/(1−b2^t)) + eps); rms·√max(m,n)·√min(m,n)·Ô/(‖Ô‖ + eps).
  Adam leaves: optax's Adam (Nesterov for Muon and NorMuon). Decoupled decay
  ``wd·w`` on the matrices, then ``−lr``.
  """

  def __init__(self, kind, lr, layouts, beta=0.95, b2=0.95, eps=1e-8, eps_unit=1e-10,
               consistent_rms=None, adaptive=False, sign=True, rms=0.2, nesterov=None,
               adam_b1=0.9, adam_b2=0.999, weight_decay=0.0, steps=5):
    self.kind, self.lr, self.layouts = kind, lr, layouts
    self.beta, self.b2, self.eps, self.eps_unit = beta, b2, eps, eps_unit
    self.consistent_rms, self.adaptive, self.sign, self.rms = consistent_rms, adaptive, sign, rms
    self.nesterov = (kind != "adamuon") if nesterov is None else nesterov
    self.adam_b1, self.adam_b2, self.wd, self.steps = adam_b1, adam_b2, weight_decay, steps
    self.t = 0
    self.m = self.v = None

  def _width(self, m, n):
    if self.consistent_rms is None:
      return np.sqrt(max(1.0, n / m))
    return self.consistent_rms * np.sqrt(max(m, n))

  def _matrix(self, i, x, shape, axes):
    """The direction of one Muon leaf (its momentum already updated)."""
    t, beta = self.t, self.beta
    if self.kind == "adamuon":
      d = np.sign(self.m[i]) if self.sign else self.m[i]
    elif self.nesterov:
      d = beta * self.m[i] / (1 - beta ** (t + 1)) + (1 - beta) * x / (1 - beta**t)
    else:
      d = self.m[i] / (1 - beta**t)
    mats = to_matrices(d, axes)
    o = np.stack([newton_schulz(a, steps=self.steps, eps=self.eps) for a in mats])
    _, m, n = o.shape
    if self.kind == "muon":
      if self.adaptive:
        o = o * np.sum(mats * o, axis=(1, 2), keepdims=True)
      o = o * self._width(m, n)
    elif self.kind == "normuon":
      if self.v[i] is None:
        self.v[i] = np.zeros((o.shape[0], 1, n))
      self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * np.mean(o**2, axis=1, keepdims=True)
      oh = o / (np.sqrt(self.v[i]) + self.eps_unit)
      fro = lambda z: np.sqrt(np.sum(z**2, axis=(1, 2), keepdims=True))
      o = oh * fro(o) / (fro(oh) + self.eps_unit) * self._width(m, n)
    else:
      if self.v[i] is None:
        self.v[i] = np.zeros_like(o)
      self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * o**2
      oh = o / (np.sqrt(self.v[i] / (1 - self.b2**t)) + self.eps)
      fro = np.sqrt(np.sum(oh**2, axis=(1, 2), keepdims=True))
      o = self.rms * np.sqrt(max(m, n)) * np.sqrt(min(m, n)) * oh / (fro + self.eps)
    return from_matrices(o, shape, axes)

  def __call__(self, g_leaves, w_leaves):
    g = [x for _, x in g_leaves]
    w = [x for _, x in w_leaves]
    if self.m is None:
      self.m = [np.zeros_like(x) for x in g]
      self.v = [None if a is not None else np.zeros_like(x)
                for x, a in zip(g, self.layouts, strict=True)]
    self.t += 1
    t = self.t
    out = []
    for i, (x, wi, axes) in enumerate(zip(g, w, self.layouts, strict=True)):
      if axes is None:  # Adam, as optax.adam (nesterov like the Muon leaves)
        b1, b2 = self.adam_b1, self.adam_b2
        self.m[i] = b1 * self.m[i] + (1 - b1) * x
        self.v[i] = b2 * self.v[i] + (1 - b2) * x**2
        if self.nesterov:
          mh = b1 * self.m[i] / (1 - b1 ** (t + 1)) + (1 - b1) * x / (1 - b1**t)
        else:
          mh = self.m[i] / (1 - b1**t)
        vh = self.v[i] / (1 - b2**t)
        eps = self.eps
        out.append(-self.lr * mh / (np.sqrt(vh) + eps))
        continue
      b = self.beta
      self.m[i] = b * self.m[i] + (1 - b) * x
      u = self._matrix(i, x, x.shape, axes)
      out.append(-self.lr * (u + self.wd * wi))
    return out


def unit_rms(o_leaves, v, layouts, decay=0.95, eps=1e-10):
  """One step of NorMuon's normalization alone on float64 leaves (``v`` a
  list, updated in place; None for a leaf that is no matrix, which passes)."""
  out = []
  for i, (x, axes) in enumerate(zip(o_leaves, layouts, strict=True)):
    if axes is None:
      out.append(x)
      continue
    o = to_matrices(x, axes)
    if v[i] is None:
      v[i] = np.zeros((o.shape[0], 1, o.shape[2]))
    v[i] = decay * v[i] + (1 - decay) * np.mean(o**2, axis=1, keepdims=True)
    oh = o / (np.sqrt(v[i]) + eps)
    fro = lambda z: np.sqrt(np.sum(z**2, axis=(1, 2), keepdims=True))
    out.append(from_matrices(oh * fro(o) / (fro(oh) + eps), x.shape, axes))
  return out

"""The Muon family: NorMuon and AdaMuon, each Muon with one more piece (DESIGN §9).

Muon (:func:`normopt.muon`) replaces each matrix's momentum by its polar
factor ``O``. Its newer members keep that direction and add one moment on it,
written here for one matrix view ``O`` of a leaf (``m = fan_in`` rows,
``n = fan_out`` columns, :mod:`normopt.layouts`):

* **NorMuon** (Li et al. 2025): a second moment per *output unit* (neuron),
  ``v ← β₂ v + (1 − β₂)·mean_rows(O²)``, divides ``O`` so that every output
  unit's update has the same RMS, then the matrix is rescaled to keep
  ``‖O‖_F``: :func:`scale_by_unit_rms`, between Muon's direction and its
  width scale (:func:`normuon`).
* **AdaMuon** (Si et al. 2025): the polar factor of the *sign* of the
  momentum, a second moment per *element* of ``O`` (Adam's, bias-corrected),
  and an RMS-aligned scale: the update's RMS is ``rms`` (0.2, AdamW's), as
  Muon's ``consistent_rms`` (:func:`adamuon`).

Both route leaves as :func:`normopt.muon` does (the layouts decide: hidden
and conv matrices get the family's step, the others Adam), run the grouped
Newton–Schulz with all its options (``ns_coeffs="polar_express"``,
``preconditioning=``), and treat every batch index of a layout (a stacked
layer, a head) as its own matrix. In Flax layout an output unit is one index
of the layout's output axes: its moment is a mean over the reduction axes
(the official NorMuon code, in PyTorch's ``(out, in)`` layout, averages over
its last axis, the same thing).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._numerics import acc_dtype
from normopt._numerics import adam_direction
from normopt._numerics import bias_corrections
from normopt._numerics import first_moment
from normopt._numerics import inv_norm
from normopt._numerics import safe_sqrt
from normopt._numerics import second_moment
from normopt._numerics import zeros_typed
from normopt.blocks import StackedSpec
from normopt.layouts import resolve_layouts
from normopt.muon_recipe import muon_partition
from normopt.muon_recipe import per_matrix_sum
from normopt.muon_recipe import scale_by_muon_momentum
from normopt.muon_recipe import scale_by_width
from normopt.muon_recipe import spectral_direction
from normopt.normalization import block_normalize
from normopt.norms import check_preconditioning
from normopt.norms import DEFAULT_NS_COEFFS


def _frobenius(x: jax.Array, pl: Any) -> jax.Array:
  """Each matrix's Frobenius norm, one entry per batch index of ``pl``."""
  return safe_sqrt(per_matrix_sum(jnp.square(x), pl))


def _matrix_states(params, layout, stacked, name, fn):
  """Per leaf, zeros typed as ``fn(leaf, layout)`` for a matrix, else a
  ``MaskedNode`` (leaves that are no matrix pass unchanged and hold no state)."""
  _, leaves, _, lays, treedef = resolve_layouts(params, layout, stacked, name)
  out = []
  for p, pl in zip(leaves, lays, strict=True):
    if pl.is_matrix:
      out.append(zeros_typed(jax.eval_shape(lambda x, pl=pl: fn(x, pl), p), p))
    else:
      out.append(optax.MaskedNode())
  return jax.tree_util.tree_unflatten(treedef, out)


class ScaleByUnitRmsState(NamedTuple):
  """State of :func:`scale_by_unit_rms`: one second moment per output unit.

  ``v`` holds, per matrix leaf, an array shaped as the leaf with its
  reduction axes of size 1 (float32 or wider); a leaf that is no matrix
  holds an ``optax.MaskedNode``.
  """

  v: Any


def _unit_mean_sq(x, pl):
  return jnp.mean(jnp.square(x.astype(acc_dtype(x))), axis=pl.reduction, keepdims=True)


def scale_by_unit_rms(
    decay: Any = 0.95,
    eps: Any = 1e-10,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NorMuon's neuron-wise normalization of an orthogonalized update.

  For each matrix ``O`` of a leaf (its layout's ``(fan_in, fan_out)`` view,
  one per batch index), with ``j`` an output unit:

  .. math::
    v_j \leftarrow \beta\, v_j + (1 - \beta)\, \tfrac{1}{m}\textstyle\sum_i O_{ij}^2,
    \qquad \hat O_{ij} = \frac{O_{ij}}{\sqrt{v_j} + \epsilon},
    \qquad u = \hat O\, \frac{\|O\|_F}{\|\hat O\|_F + \epsilon}

  with ``v₀ = 0`` and no bias correction (the last step's ratio cancels
  it). Muon's polar factor has equal singular values but uneven output
  units (rows of ``Wᵀ``): some neurons get much larger updates than others.
  Dividing by each unit's running RMS evens them out, and the matrix keeps
  the Frobenius norm Muon gave it, so Muon's learning rate and width scale
  still apply. Put it after the spectral direction, as :func:`normuon` does.
  Leaves that are no matrix (biases, norm scales, ``"unknown"`` leaves)
  pass unchanged.

  Args:
    decay: ``β``, the decay of the per-unit second moment (NorMuon's
      ``beta2``).
    eps: added to ``√v`` and to ``‖Ô‖_F`` before dividing by them.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`); each slice is its own matrix.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; default
      :func:`normopt.layouts_from_shapes`): its matrices, and the output
      units (a vector over the reduction axes each).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`ScaleByUnitRmsState`; ``init`` needs only the params' shapes.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> o = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]])}   # (fan_in, fan_out)
    >>> tx = normopt.scale_by_unit_rms()
    >>> u, _ = tx.update(o, tx.init(o))
    >>> [round(float(x), 4) for x in jnp.diag(u["w"])]    # even units, ‖·‖_F = √10
    [2.2361, 2.2361]

  References:
    Li et al., `NorMuon: Making Muon more efficient and scalable
    <https://arxiv.org/abs/2510.05491>`_, 2025.
  """

  def init_fn(params):
    return ScaleByUnitRmsState(
        v=_matrix_states(params, layout, stacked, "scale_by_unit_rms", _unit_mean_sq))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _, leaves, _, lays, treedef = resolve_layouts(
        updates, layout, stacked, "scale_by_unit_rms")
    out, new_v = [], []
    for x, v, pl in zip(leaves, treedef.flatten_up_to(state.v), lays, strict=True):
      if not pl.is_matrix:
        out.append(x)
        new_v.append(v)
        continue
      o = x.astype(acc_dtype(x))
      mean_sq = _unit_mean_sq(o, pl)
      v_new = first_moment(mean_sq, v.astype(o.dtype), decay)
      unit = inv_norm(safe_sqrt(v_new) + eps, 0.0)  # 1 / (√v + eps), per unit
      # Both Frobenius norms from the per-unit mean squares (fan_in times
      # them is a unit's sum of squares): one pass over O instead of three.
      fan_in, _ = pl.fans(jnp.shape(x))
      fro = safe_sqrt(fan_in * per_matrix_sum(mean_sq, pl))
      fro_hat = safe_sqrt(fan_in * per_matrix_sum(mean_sq * jnp.square(unit), pl))
      scale = unit * (fro * inv_norm(fro_hat + eps, 0.0))
      out.append((o * scale).astype(jnp.result_type(x)))
      new_v.append(v_new.astype(v.dtype))
    unflat = lambda xs: jax.tree_util.tree_unflatten(treedef, xs)
    return unflat(out), ScaleByUnitRmsState(v=unflat(new_v))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByElementRmsState(NamedTuple):
  """State of AdaMuon's element-wise second moment (inside :func:`adamuon`).

  ``count`` (int32) and ``v``: per matrix leaf an array of its shape (float32
  or wider); a leaf that is no matrix holds an ``optax.MaskedNode``.
  """

  count: Any
  v: Any


def _element_moment(x, pl):
  del pl
  return jnp.square(x.astype(acc_dtype(x)))


def _scale_by_element_rms(b2, eps, *, stacked, layout):
  """AdaMuon's moment on ``O``: ``√min(m, n)·Ô/(‖Ô‖_F + eps)``, ``Ô`` Adam's.

  ``v ← b2·v + (1 − b2)·O²``, ``Ô = O/(√(v/(1 − b2ᵗ)) + eps)`` element-wise;
  each matrix is then rescaled to the Frobenius norm ``√min(m, n)`` of an
  exact ``m × n`` polar factor, so :func:`normopt.scale_by_width` with
  ``consistent_rms=r`` after it makes the update's RMS exactly ``r``.
  """

  def init_fn(params):
    return ScaleByElementRmsState(
        count=jnp.zeros([], jnp.int32),
        v=_matrix_states(params, layout, stacked, "adamuon", _element_moment))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _, leaves, _, lays, treedef = resolve_layouts(updates, layout, stacked, "adamuon")
    count = optax.safe_increment(state.count)
    _, beta2, _, bc2 = bias_corrections(b2, b2, count)
    out, new_v = [], []
    for x, v, pl in zip(leaves, treedef.flatten_up_to(state.v), lays, strict=True):
      if not pl.is_matrix:
        out.append(x)
        new_v.append(v)
        continue
      o = x.astype(acc_dtype(x))
      v_new = second_moment(o, v.astype(o.dtype), beta2)
      o_hat = adam_direction(o, v_new, None, bc2, eps)
      size = min(pl.fans(jnp.shape(x))) ** 0.5
      o_hat = o_hat * (size * inv_norm(_frobenius(o_hat, pl) + eps, 0.0))
      out.append(o_hat.astype(jnp.result_type(x)))
      new_v.append(v_new.astype(v.dtype))
    unflat = lambda xs: jax.tree_util.tree_unflatten(treedef, xs)
    return unflat(out), ScaleByElementRmsState(count=count, v=unflat(new_v))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def normuon(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.95,
    b2: float = 0.95,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    eps: float = 1e-8,
    nesterov: bool = True,
    grouped: bool = True,
    gram: bool = False,
    muon_mask: Any = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: Any = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    consistent_rms: Any = None,
    preconditioning: str = "frobenius",
    eps_unit: Any = 1e-10,
) -> optax.GradientTransformationExtraArgs:
  r"""NorMuon: Muon with a neuron-wise second moment on its orthogonal update.

  For the Muon leaves (as :func:`normopt.muon` routes them), with ``m̂``
  Muon's Nesterov momentum and ``O = polar(m̂)``:

  .. math::
    v_j \leftarrow \beta_2 v_j + (1-\beta_2)\,\mathrm{mean}_i\, O_{ij}^2,
    \quad \hat O = \frac{O}{\sqrt{v} + \epsilon_u}\,
      \frac{\|O\|_F}{\|\hat O\|_F + \epsilon_u},
    \quad u = -\eta\,\Big(\sqrt{\max(1, \tfrac{n}{m})}\; \hat O + \lambda w\Big)

  per matrix (``m = fan_in``, ``n = fan_out``, ``j`` an output unit): the
  chain ``scale_by_muon_momentum → block_normalize(norm="spectral") →``
  :func:`scale_by_unit_rms` ``→ scale_by_width``; Adam for the other leaves.
  Muon's polar factor gives every direction of a matrix the same size but
  leaves its output units (neurons) uneven; NorMuon evens them out with an
  Adam-like per-neuron second moment (one number per output unit: memory
  ``1/m`` of Adam's), keeping the matrix's Frobenius norm, so Muon's
  learning rate carries over. ``consistent_rms=r`` uses Moonlight's scale
  ``r·√max(m, n)`` instead of ``√max(1, n/m)``.

  Args:
    learning_rate: step size (float or ``optax.Schedule``).
    beta: momentum decay (Muon's; NorMuon's ``momentum``).
    b2: decay of the per-unit second moment (NorMuon's ``beta2``).
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`).
    layout: what each leaf is (see :func:`normopt.muon`): its route, its
      matrices and their output units.
    weight_decay: decoupled weight decay of the Muon leaves.
    weight_decay_mask: mask (pytree prefix of bools or callable) for it.
    mu_dtype: optional dtype of the momentum.
    ns_steps: Newton–Schulz steps.
    ns_coeffs: Newton–Schulz coefficients: one ``(a, b, c)``, one per step,
      or a preset name (``"polar_express"``: 8 steps; see
      :func:`normopt.polar_factors`).
    eps: added to each matrix's Frobenius norm before Newton–Schulz, and
      Adam's ``eps``.
    nesterov: Nesterov momentum (Muon's and Adam's).
    grouped: group the Newton–Schulz over matrices of equal shape.
    gram: the Gram form of the Newton–Schulz (see :func:`normopt.muon`).
    muon_mask: ``None`` (the layouts decide) or a pytree prefix of bools /
      a callable choosing the NorMuon leaves.
    adam_b1: Adam's first-moment decay for the other leaves.
    adam_b2: Adam's second-moment decay.
    adam_eps_root: Adam's ``eps_root``.
    adam_weight_decay: decoupled weight decay of the Adam leaves.
    adam_learning_rate: Adam's step size (default: ``learning_rate``).
    consistent_rms: ``None`` or the update RMS ``r`` (see
      :func:`normopt.scale_by_width`).
    preconditioning: ``"frobenius"``, ``"aol"`` or ``"schatten"`` (see
      :func:`normopt.polar_factors`).
    eps_unit: ``ε_u``, added to ``√v`` and to ``‖Ô‖_F`` (NorMuon's 1e-10).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> w_true = jax.random.normal(jax.random.key(1), (8, 4))
    >>> loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - x @ w_true) ** 2)
    >>> p = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
    >>> tx = normopt.normuon(optax.cosine_decay_schedule(0.1, 300))
    >>> s = tx.init(p)
    >>> step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    >>> l0 = loss(p)
    >>> for _ in range(300):
    ...   u, s = step(p, s)
    ...   p = optax.apply_updates(p, u)
    >>> bool(loss(p) < 1e-3 * l0)
    True

  References:
    Li et al., `NorMuon: Making Muon more efficient and scalable
    <https://arxiv.org/abs/2510.05491>`_, 2025 (reference code
    ``zichongli5/NorMuon``); Jordan et al., `Muon
    <https://kellerjordan.github.io/posts/muon/>`_, 2024.
  """
  check_preconditioning(preconditioning)
  matrices = optax.chain(
      scale_by_muon_momentum(beta=beta, nesterov=nesterov, mu_dtype=mu_dtype),
      spectral_direction(
          stacked=stacked, layout=layout, eps=eps, ns_steps=ns_steps,
          ns_coeffs=ns_coeffs, grouped=grouped, gram=gram,
          preconditioning=preconditioning),
      scale_by_unit_rms(b2, eps_unit, stacked=stacked, layout=layout),
      scale_by_width(stacked=stacked, layout=layout, consistent_rms=consistent_rms),
  )
  return muon_partition(
      matrices, learning_rate, stacked=stacked, layout=layout, muon_mask=muon_mask,
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      mu_dtype=mu_dtype, eps=eps, nesterov=nesterov, adam_b1=adam_b1,
      adam_b2=adam_b2, adam_eps_root=adam_eps_root,
      adam_weight_decay=adam_weight_decay, adam_learning_rate=adam_learning_rate)


def adamuon(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-10,
    *,
    sign: bool = True,
    rms: Any = 0.2,
    stacked: StackedSpec = None,
    layout: Any = None,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    nesterov: bool = False,
    grouped: bool = True,
    gram: bool = False,
    muon_mask: Any = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: Any = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    preconditioning: str = "frobenius",
) -> optax.GradientTransformationExtraArgs:
  r"""AdaMuon: an element-wise second moment on Muon's orthogonal update, RMS-aligned.

  For the Muon leaves (as :func:`normopt.muon` routes them), per matrix
  (``m = fan_in`` rows, ``n = fan_out`` columns):

  .. math::
    M \leftarrow b_1 M + (1-b_1)\,G, \quad
    O = \mathrm{polar}(\mathrm{sign}(M)), \quad
    V \leftarrow b_2 V + (1-b_2)\, O \odot O, \quad
    \hat O = \frac{O}{\sqrt{V/(1-b_2^t)} + \epsilon}

  .. math::
    u = -\eta\,\Big(r \sqrt{\max(m, n)}\,\sqrt{\min(m, n)}\;
        \frac{\hat O}{\|\hat O\|_F + \epsilon} + \lambda w\Big)

  with ``r = rms``: the update's RMS is ``r`` whatever the shape (0.2 is
  AdamW's typical RMS, so AdamW's learning rate and weight decay carry
  over). ``sign=True`` is the paper's form (the sign makes the polar
  factor's input insensitive to outlier entries); ``sign=False`` takes
  ``polar(M)``, as the reference code's ``adamuon.py`` does. The momentum is
  :func:`normopt.scale_by_muon_momentum` (bias-corrected, which neither
  ``sign`` nor ``polar`` sees; ``nesterov=True`` gives the reference code's
  Nesterov form), the last factor is :func:`normopt.scale_by_width` with
  ``consistent_rms=rms``; Adam for the other leaves.

  Args:
    learning_rate: step size (float or ``optax.Schedule``).
    b1: momentum decay.
    b2: decay of the element-wise second moment of ``O``.
    eps: added to ``√V̂`` and to ``‖Ô‖_F``, to each matrix's Frobenius norm
      before Newton–Schulz, and Adam's ``eps``.
    sign: orthogonalize ``sign(M)`` (the paper's form) or ``M``.
    rms: the update's RMS ``r`` (before the learning rate).
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`).
    layout: what each leaf is (see :func:`normopt.muon`).
    weight_decay: decoupled weight decay of the Muon leaves.
    weight_decay_mask: mask (pytree prefix of bools or callable) for it.
    mu_dtype: optional dtype of the momentum.
    ns_steps: Newton–Schulz steps.
    ns_coeffs: Newton–Schulz coefficients: one ``(a, b, c)``, one per step,
      or a preset name (``"polar_express"``: 8 steps; see
      :func:`normopt.polar_factors`).
    nesterov: Nesterov momentum (the matrices' and Adam's).
    grouped: group the Newton–Schulz over matrices of equal shape.
    gram: the Gram form of the Newton–Schulz (see :func:`normopt.muon`).
    muon_mask: ``None`` (the layouts decide) or a pytree prefix of bools /
      a callable choosing the AdaMuon leaves.
    adam_b1: Adam's first-moment decay for the other leaves.
    adam_b2: Adam's second-moment decay.
    adam_eps_root: Adam's ``eps_root``.
    adam_weight_decay: decoupled weight decay of the Adam leaves.
    adam_learning_rate: Adam's step size (default: ``learning_rate``).
    preconditioning: ``"frobenius"``, ``"aol"`` or ``"schatten"`` (see
      :func:`normopt.polar_factors`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, normopt
    >>> g = {"w": jax.random.normal(jax.random.key(0), (32, 8))}
    >>> tx = normopt.adamuon(1.0)
    >>> u, _ = tx.update(g, tx.init(g))
    >>> round(float(jnp.sqrt(jnp.mean(u["w"] ** 2))), 4)   # RMS = rms
    0.2

  References:
    Si, Zhang and Shen, `AdaMuon: Adaptive Muon Optimizer
    <https://arxiv.org/abs/2507.11005>`_, 2025 (reference code
    ``Chongjie-Si/AdaMuon``); Liu et al., `Muon is Scalable for LLM
    Training <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  check_preconditioning(preconditioning)
  signs = [block_normalize(blocks="leaf", stacked=stacked, layout=layout, norm="sign")]
  matrices = optax.chain(
      scale_by_muon_momentum(beta=b1, nesterov=nesterov, mu_dtype=mu_dtype),
      *(signs if sign else []),
      spectral_direction(
          stacked=stacked, layout=layout, eps=eps, ns_steps=ns_steps,
          ns_coeffs=ns_coeffs, grouped=grouped, gram=gram,
          preconditioning=preconditioning),
      _scale_by_element_rms(b2, eps, stacked=stacked, layout=layout),
      scale_by_width(stacked=stacked, layout=layout, consistent_rms=rms),
  )
  return muon_partition(
      matrices, learning_rate, stacked=stacked, layout=layout, muon_mask=muon_mask,
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      mu_dtype=mu_dtype, eps=eps, nesterov=nesterov, adam_b1=adam_b1,
      adam_b2=adam_b2, adam_eps_root=adam_eps_root,
      adam_weight_decay=adam_weight_decay, adam_learning_rate=adam_learning_rate)

"""ND-Adam (Zhang et al. 2018): optimization of unit vectors on the sphere.

ND-Adam keeps the input-weight vector of each hidden unit on the unit sphere.
Per vector ``w`` (with ``ŵ = w / ‖w‖``) one step is (the paper's Algorithm 1):

.. math::
  \\bar g &= g - (g \\cdot \\hat w)\\,\\hat w
    && \\text{(eq. 12, spherical_project)} \\\\
  m &\\leftarrow \\beta_1 m + (1-\\beta_1)\\,\\bar g, \\quad
  v \\leftarrow \\beta_2 v + (1-\\beta_2)\\,\\|\\bar g\\|^2
    && \\text{(eqs. 8-9, scale_by_vector_adam)} \\\\
  u &= -\\alpha\\,\\hat m / (\\sqrt{\\hat v} + \\epsilon)
    && \\text{(eqs. 10-11, learning rate)} \\\\
  w &\\leftarrow (w + u) / \\|w + u\\|                      && \\text{(spherical_retract)}

with ``m̂ = m / (1 - β1^t)``, ``v̂ = v / (1 - β2^t)`` (the official code's bias
correction, and optax's ``m̂/(√v̂ + eps)``). ``v`` is ONE scalar per vector, so
the state is about half of Adam's.

Which leaves are vectors: ``vector_axes=None`` is the ``"unit"`` rule of
:mod:`normopt.blocks`: a leaf of ``ndim >= 2`` is split into vectors over all
axes but the last (Dense ``(in, out)``: one vector per output unit over axis 0;
Conv HWIO: one per output channel over ``(0, 1, 2)``); leaves of ``ndim < 2``
(biases, BatchNorm scales) are not vectors. A callable
``(path, leaf) -> tuple[int, ...] | None`` overrides the rule: it returns the
axes that one vector spans, or ``None`` for a leaf that is not a vector.

Zero vectors: ``ŵ`` of a zero vector is taken as 0 (no projection), a zero
gradient gives a zero update, and if ``w + u`` is zero the retraction leaves
``w`` where it is (update 0). Nothing returns NaN or Inf for finite input.

Stacked (scanned) layers: with ``stacked=`` (``None``, a callable
``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a pytree
prefix of ints; see :mod:`normopt.blocks`), the default vectors of a stacked
leaf are those of each slice, and a ``vector_axes`` callable may not return a
stacked axis: no vector spans layers.

``axis_name``: inside ``shard_map``/``pmap`` (or a named ``vmap``) with leaves
sharded along the axes a vector spans, the partial dot products and squared
norms are ``psum``-med over that axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import jax
from jax import lax
import jax.numpy as jnp
import optax

from normopt._numerics import acc_dtype
from normopt._numerics import adam_direction
from normopt._numerics import bias_corrections
from normopt._numerics import canonical_dtype
from normopt._numerics import decayed_weights
from normopt._numerics import first_moment
from normopt._numerics import inv_norm
from normopt._numerics import safe_sqrt
from normopt._numerics import second_moment
from normopt._numerics import where_pos
from normopt._numerics import zeros_typed
from normopt.blocks import check_same_structure
from normopt.blocks import flatten_layouts
from normopt.blocks import flatten_stacked
from normopt.blocks import require_params
from normopt.blocks import StackedSpec
from normopt.blocks import with_layout

VectorAxes: TypeAlias = None | Callable[[Any, Any], tuple[int, ...] | None]


def _leaf_axes(path, leaf, vector_axes, stacked, name):
  """The axes one vector of ``leaf`` spans, as the callable ``vector_axes``
  says, or None if it holds no vectors.

  ``stacked`` leading axes index separate layers: no vector may span one.
  """
  if not callable(vector_axes):
    raise ValueError(
        f"{name}: vector_axes must be None or a callable "
        f"(path, leaf) -> tuple of axes | None, got {vector_axes!r}."
    )
  axes = vector_axes(path, leaf)
  if axes is None:
    return None
  ndim = len(jnp.shape(leaf))
  try:
    axes = tuple(int(a) for a in axes)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"{name}: vector_axes returned {axes!r} for "
        f"{jax.tree_util.keystr(path)}; expected a tuple of ints or None."
    ) from e
  if not axes or any(not -ndim <= a < ndim for a in axes):
    raise ValueError(
        f"{name}: vector_axes returned {axes!r} for "
        f"{jax.tree_util.keystr(path)} of shape {jnp.shape(leaf)}; expected "
        f"a non-empty tuple of axes in [-{ndim}, {ndim})."
    )
  axes = tuple(sorted({a % ndim for a in axes}))
  if axes[0] < stacked:
    raise ValueError(
        f"{name}: vector_axes returned {axes!r} for "
        f"{jax.tree_util.keystr(path)} of shape {jnp.shape(leaf)}, whose "
        f"first {stacked} axes are stacked layers; a vector cannot span them."
    )
  return axes


def _flat_axes(tree, vector_axes, stacked, name):
  """Flattens ``tree``; returns (leaves, per-leaf axes, treedef).

  By default a leaf's vectors are its layout's output units (the shape rule
  without ``layout=``: all non-stacked axes but the last; a leaf named
  ``bias`` or ``scale`` holds none).
  """
  if vector_axes is None:
    _, leaves, _, lays, treedef = flatten_layouts(tree, stacked, None, "unit", name)
    return leaves, [pl.unit_axes() for pl in lays], treedef
  paths, leaves, counts, treedef = flatten_stacked(tree, stacked, name)
  axes = [
      _leaf_axes(p, x, vector_axes, k, name)
      for p, x, k in zip(paths, leaves, counts, strict=True)
  ]
  return leaves, axes, treedef


def _vsum(x, axes, axis_name):
  """Sum over a vector's axes (keepdims), psum-med over ``axis_name``."""
  s = jnp.sum(x, axis=axes, keepdims=True)
  if axis_name is not None:
    s = lax.psum(s, axis_name)
  return s


def _vnorm(x, axes, axis_name):
  """Euclidean norm of each vector, in float32 or wider (keepdims)."""
  x = x.astype(acc_dtype(x))
  return safe_sqrt(_vsum(jnp.square(x), axes, axis_name))


def _unit(w, axes, axis_name):
  """``w / ‖w‖`` per vector in float32+, and 0 for a zero vector."""
  w32 = w.astype(acc_dtype(w))
  return w32 * inv_norm(_vnorm(w, axes, axis_name), 0.0)


def _vector_moments(params, vector_axes, stacked, name, mu_dtype=None):
  """Zero moments ``(mu, nu)``: ``nu`` one scalar per vector (float32 or wider)
  shaped ``(1, ..., 1, units)``, per element for leaves that are not vectors.

  ``nu`` of a vector leaf is typed as the per-vector sum the update computes
  (shape, dtype and, under sharding in types, sharding), so the state's types
  do not change after an update.
  """
  leaves, axes, treedef = _flat_axes(params, vector_axes, stacked, name)
  mu = [jnp.zeros_like(p, dtype=mu_dtype) for p in leaves]
  nu = []
  for p, a in zip(leaves, axes, strict=True):
    if a is None:
      nu.append(jnp.zeros_like(p))
    else:
      nu.append(zeros_typed(jax.eval_shape(
          lambda x, a=a: jnp.sum(x.astype(acc_dtype(x)), axis=a, keepdims=True), p
      ), p))
  unflat = lambda x: jax.tree_util.tree_unflatten(treedef, x)
  return unflat(mu), unflat(nu)


def _check_params(updates, params, name):
  require_params(params, name)
  check_same_structure(updates, params, name)


def normalize_vectors(
    params: Any,
    vector_axes: VectorAxes = None,
    axis_name: str | None = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
) -> Any:
  """Puts every unit vector of ``params`` on the unit sphere.

  ND-Adam's initialisation (Algorithm 1): ``w ← w / ‖w‖`` per vector. Leaves
  that are not vectors are returned unchanged; a zero vector stays zero.

  Args:
    params: a pytree of arrays.
    vector_axes: ``None`` (the ``"unit"`` rule) or a callable
      ``(path, leaf) -> axes | None`` (see :mod:`normopt.spherical`).
    axis_name: mapped axis across which the vectors are sharded.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.spherical` and :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.

  Returns:
    A pytree like ``params``, each leaf of its original dtype.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> p = {"dense": {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.full(3, 2.0)}}
    >>> q = normopt.normalize_vectors(p)
    >>> jnp.linalg.norm(q["dense"]["kernel"], axis=0).tolist(), q["dense"]["bias"].tolist()
    ([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])

  References:
    Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018.
  """
  stacked = with_layout(stacked, layout)
  leaves, axes, treedef = _flat_axes(
      params, vector_axes, stacked, "normalize_vectors"
  )
  out = [
      w if a is None else _unit(w, a, axis_name).astype(jnp.result_type(w))
      for w, a in zip(leaves, axes, strict=True)
  ]
  return jax.tree_util.tree_unflatten(treedef, out)


def spherical_project(
    vector_axes: VectorAxes = None,
    axis_name: str | None = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Projects each vector's gradient onto the sphere's tangent space.

  .. math::
    \bar g = g - (g \cdot \hat w)\, \hat w, \qquad \hat w = w / \|w\|_2

  (ND-Adam eq. 12). The result is orthogonal to ``w``, so a small step along it
  changes only the direction of ``w``, not its norm. Leaves that are not
  vectors pass through; a zero vector ``w`` leaves its gradient unprojected.

  Args:
    vector_axes: ``None`` (the ``"unit"`` rule) or a callable
      ``(path, leaf) -> axes | None`` (see :mod:`normopt.spherical`).
    axis_name: mapped axis across which the vectors are sharded.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.spherical` and :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.

  Returns:
    An ``optax.GradientTransformation`` with empty state; ``update`` needs
    ``params``.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> w = {"kernel": jnp.array([[1.0], [0.0]])}
    >>> g = {"kernel": jnp.array([[3.0], [4.0]])}
    >>> tx = normopt.spherical_project()
    >>> u, _ = tx.update(g, tx.init(w), w)
    >>> u["kernel"].ravel().tolist()          # the radial part 3.0 is removed
    [0.0, 4.0]

  References:
    Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018.
  """
  stacked = with_layout(stacked, layout)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    name = "spherical_project"
    _check_params(updates, params, name)
    g_leaves, axes, treedef = _flat_axes(updates, vector_axes, stacked, name)
    w_leaves = jax.tree.leaves(params)

    def project(g, w, a):
      if a is None:
        return g
      w_hat = _unit(w, a, axis_name)
      g32 = g.astype(w_hat.dtype)
      return (g32 - _vsum(g32 * w_hat, a, axis_name) * w_hat).astype(
          jnp.result_type(g)
      )

    out = [project(g, w, a) for g, w, a in zip(g_leaves, w_leaves, axes, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


class ScaleByVectorAdamState(NamedTuple):
  """State of :func:`scale_by_vector_adam`.

  ``nu`` holds one scalar per vector (shape ``(1, ..., 1, units)`` for the
  ``"unit"`` rule, float32 or wider) and a full per-element second moment for
  leaves that are not vectors.
  """

  count: jax.Array  # type: ignore[assignment]
  mu: Any
  nu: Any


def scale_by_vector_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    vector_axes: VectorAxes = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    axis_name: str | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with one second-moment scalar per vector (ND-Adam eqs. 8-11).

  .. math::
    m &\leftarrow \beta_1 m + (1-\beta_1)\, g, \qquad
    v \leftarrow \beta_2 v + (1-\beta_2)\, \|g\|_2^2 \\
    u &= \hat m / (\sqrt{\hat v} + \epsilon), \quad
    \hat m = m / (1-\beta_1^t), \ \hat v = v / (1-\beta_2^t)

  ``m`` is per element and ``v`` is one scalar per vector, so the update keeps
  the direction of ``m̂`` within each vector (the "direction-preserving" of
  ND-Adam) and the state is about half the size of Adam's. Feed it the
  projected gradient (:func:`spherical_project`). Leaves that are not vectors
  get plain per-element Adam (``optax.scale_by_adam``'s math).

  Args:
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to ``√v̂`` in the denominator.
    vector_axes: ``None`` (the ``"unit"`` rule) or a callable
      ``(path, leaf) -> axes | None`` (see :mod:`normopt.spherical`).
    axis_name: mapped axis across which the vectors are sharded.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.spherical` and :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    mu_dtype: optional dtype of the first moment; defaults to the leaf's.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByVectorAdamState`.

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> w = {"kernel": jnp.ones((256, 8))}
    >>> tx = normopt.scale_by_vector_adam()
    >>> optax.tree.size(tx.init(w).nu), optax.tree.size(optax.adam(1e-3).init(w)[0].nu)
    (8, 2048)
    >>> u, _ = tx.update({"kernel": jnp.full((256, 8), 3.0)}, tx.init(w))
    >>> round(float(jnp.linalg.norm(u["kernel"][:, 0])), 4)    # unit step per vector
    1.0

  References:
    Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018.
  """
  stacked = with_layout(stacked, layout)
  mu_dtype = canonical_dtype(mu_dtype)

  def init_fn(params):
    mu, nu = _vector_moments(
        params, vector_axes, stacked, "scale_by_vector_adam", mu_dtype
    )
    return ScaleByVectorAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    name = "scale_by_vector_adam"
    g_leaves, axes, treedef = _flat_axes(updates, vector_axes, stacked, name)
    mu_leaves = treedef.flatten_up_to(state.mu)
    nu_leaves = treedef.flatten_up_to(state.nu)
    count = optax.safe_increment(state.count)
    beta1, beta2, bc1, bc2 = bias_corrections(b1, b2, count)
    new_u, new_mu, new_nu = [], [], []
    for g, m, v, a in zip(g_leaves, mu_leaves, nu_leaves, axes, strict=True):
      m_old_dtype, v_old_dtype = jnp.result_type(m), jnp.result_type(v)
      g32 = g.astype(acc_dtype(g))
      m = first_moment(g32, m.astype(g32.dtype), beta1)
      if a is None:
        v = second_moment(g32, v.astype(g32.dtype), beta2)
      else:
        g2 = _vsum(jnp.square(g32), a, axis_name)
        v = first_moment(g2, v.astype(g2.dtype), beta2)  # an EMA of ‖g‖²
      u = adam_direction(m, v, bc1, bc2, eps)
      new_u.append(u.astype(jnp.result_type(g)))
      new_mu.append(m.astype(m_old_dtype))
      new_nu.append(v.astype(v_old_dtype))
    unflat = lambda x: jax.tree_util.tree_unflatten(treedef, x)
    return unflat(new_u), ScaleByVectorAdamState(
        count=count, mu=unflat(new_mu), nu=unflat(new_nu)
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def spherical_retract(
    vector_axes: VectorAxes = None,
    axis_name: str | None = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Turns an update into one that lands each vector back on the sphere.

  .. math::
    u \mapsto \frac{w + u}{\|w + u\|_2} - w

  so that ``optax.apply_updates(w, result)`` is ``(w + u) / ‖w + u‖``: ND-Adam's
  renormalization after each step. Put it LAST in a chain, after the learning
  rate. Leaves that are not vectors pass through. If ``w + u`` is zero the
  update is 0 (``w`` stays).

  Args:
    vector_axes: ``None`` (the ``"unit"`` rule) or a callable
      ``(path, leaf) -> axes | None`` (see :mod:`normopt.spherical`).
    axis_name: mapped axis across which the vectors are sharded.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.spherical` and :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.

  Returns:
    An ``optax.GradientTransformation`` with empty state; ``update`` needs
    ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> w = {"kernel": jnp.array([[1.0], [0.0]])}
    >>> tx = normopt.spherical_retract()
    >>> u, _ = tx.update({"kernel": jnp.array([[0.0], [1.0]])}, tx.init(w), w)
    >>> new = optax.apply_updates(w, u)
    >>> round(float(jnp.linalg.norm(new["kernel"])), 4)
    1.0

  References:
    Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018.
  """
  stacked = with_layout(stacked, layout)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    name = "spherical_retract"
    _check_params(updates, params, name)
    u_leaves, axes, treedef = _flat_axes(updates, vector_axes, stacked, name)
    w_leaves = jax.tree.leaves(params)

    def retract(u, w, a):
      if a is None:
        return u
      acc = acc_dtype(w)
      w32 = w.astype(acc)
      new = w32 + u.astype(acc)
      norm = _vnorm(new, a, axis_name)
      step = jnp.where(norm > 0, new * inv_norm(norm, 0.0) - w32, 0)
      return step.astype(jnp.result_type(u))

    out = [retract(u, w, a) for u, w, a in zip(u_leaves, w_leaves, axes, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


class NDAdamState(NamedTuple):
  """State of :func:`nd_adam_transform` (and so of :func:`normopt.nd_adam`).

  ``count`` is the number of steps taken; ``mu`` the per-element first moment
  (the leaf's dtype); ``nu`` one float32 (or wider) second moment per vector,
  shaped ``(1, ..., 1, units)`` for the ``"unit"`` rule, and a per-element
  second moment for leaves that are not vectors (plain Adam).
  """

  count: jax.Array  # type: ignore[assignment]
  mu: Any
  nu: Any


def _vector_step(w, g, m, v, axes, lr, beta1, beta2, eps, bc1, bc2, axis_name):
  """One ND-Adam step of a vector leaf: ``(update, new mu, new nu)``.

  Per vector, with ``k = (g·w)/‖w‖²`` (0 for a zero vector) the projected
  gradient is ``ḡ = g - k·w`` and ``‖ḡ‖² = Σg² - k·Σg·w``; then
  ``v' = β2·v + (1-β2)·‖ḡ‖²``, ``m' = β1·m + (1-β1)·ḡ``,
  ``s = α/((1-β1^t)(√(v'/(1-β2^t)) + ε))`` and the new vector is
  ``(w - s·m')/‖w - s·m'‖``, returned as an update (0 where ``w - s·m' = 0``).

  Three passes over memory (see docs/design.md, "ND-Adam: one fused step
  in three passes").
  """
  acc = acc_dtype(w)
  w, g, m = (x.astype(acc) for x in (w, g, m))
  sums = jnp.stack(
      [jnp.sum(p, axis=axes, keepdims=True) for p in (w * w, g * w, g * g)]
  )
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  ww, gw, gg = sums[0], sums[1], sums[2]
  k = where_pos(ww, lambda x: gw / x)
  gbar2 = jnp.maximum(gg - k * gw, 0)  # = Σg² - 2k·Σg·w + k²·Σw²
  v = beta2 * v.astype(acc) + (1 - beta2) * gbar2
  step = lr / (bc1 * (jnp.sqrt(v / bc2) + eps))
  m_new = beta1 * m + (1 - beta1) * (g - k * w)
  new2 = _vsum(jnp.square(w - step * m_new), axes, axis_name)
  q = where_pos(new2, lax.rsqrt)
  # Not ``(w - step·m') * q - w``: a second use of ``w - step·m'`` would make
  # XLA write it to a full-size temporary instead of recomputing it.
  u = jnp.where(q > 0, w * (q - 1) - (step * q) * m_new, 0)
  return u, m_new, v


def nd_adam_transform(
    learning_rate_vector: Any = 0.05,
    learning_rate_scalar: Any = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    vector_axes: VectorAxes = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    axis_name: str | None = None,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""ND-Adam's whole step, fused: the engine of :func:`normopt.nd_adam`.

  Computes ``chain(spherical_project, scale_by_vector_adam,
  scale_by_learning_rate(learning_rate_vector), spherical_retract)`` on vector
  leaves and ``optax.adam(learning_rate_scalar)`` on the others. The chain
  reduces each vector four times one after the other (``‖w‖``, ``g·ŵ``,
  ``‖ḡ‖²``, ``‖w + u‖``), each a pass over full-size arrays; here, per vector,
  with ``k = (g·w)/‖w‖²`` and ``s = α/((1-β1^t)(√v̂ + ε))``:

  .. math::
    \|\bar g\|^2 = \Sigma g^2 - k\,\Sigma g w, \quad
    v \leftarrow \beta_2 v + (1-\beta_2)\|\bar g\|^2, \quad
    m' = \beta_1 m + (1-\beta_1)(g - k w), \quad
    w \leftarrow \frac{w - s\,m'}{\|w - s\,m'\|}

  so each vector leaf takes three passes (the sums ``Σw², Σg·w, Σg²``;
  ``m'``; ``‖w - s·m'‖²`` and the update). A zero vector, a zero gradient and
  ``w - s·m' = 0`` behave as in the chain (no NaN or Inf).

  Args:
    learning_rate_vector: step size of the vectors (float or schedule).
    learning_rate_scalar: Adam step size of the other leaves (float or
      schedule).
    b1: first-moment decay.
    b2: second-moment decay.
    eps: added to ``√v̂``.
    vector_axes: ``None`` (the ``"unit"`` rule) or a callable
      ``(path, leaf) -> axes | None`` (see :mod:`normopt.spherical`).
    axis_name: mapped axis across which the vectors are sharded.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.spherical` and :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    weight_decay: decoupled weight decay ``λ`` (float or schedule) of the
      leaves that are not vectors (``−learning_rate_scalar·(d + λw)``, by
      ``optax.add_decayed_weights``); vectors never decay.
    weight_decay_mask: which of those leaves decay (``optax.adamw``'s
      ``mask``: a pytree prefix of bools or a callable); ``None``: all.
    mu_dtype: optional dtype of the first moment; defaults to the leaf's.

  Returns:
    An ``optax.GradientTransformation`` with :class:`NDAdamState`; ``update``
    needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> w = normopt.normalize_vectors({"kernel": jnp.ones((4, 2))})
    >>> tx = normopt.spherical.nd_adam_transform(0.1)
    >>> u, _ = tx.update({"kernel": jnp.eye(4, 2)}, tx.init(w), w)
    >>> new = optax.apply_updates(w, u)
    >>> jnp.linalg.norm(new["kernel"], axis=0).round(4).tolist()
    [1.0, 1.0]

  References:
    Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018.
  """
  stacked = with_layout(stacked, layout)
  name = "nd_adam"
  mu_dtype = canonical_dtype(mu_dtype)

  def init_fn(params):
    mu, nu = _vector_moments(params, vector_axes, stacked, name, mu_dtype)
    return NDAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _check_params(updates, params, name)
    g_leaves, axes, treedef = _flat_axes(updates, vector_axes, stacked, name)
    w_leaves = treedef.flatten_up_to(params)
    mu_leaves = treedef.flatten_up_to(state.mu)
    nu_leaves = treedef.flatten_up_to(state.nu)
    count = optax.safe_increment(state.count)
    # Schedules see the step from 0, as optax.scale_by_learning_rate.
    lr_v, lr_s = (
        lr(state.count) if callable(lr) else lr
        for lr in (learning_rate_vector, learning_rate_scalar)
    )
    lr_v = jnp.asarray(lr_v, jnp.float32)
    lr_s = jnp.asarray(lr_s, jnp.float32)
    beta1, beta2, bc1, bc2 = bias_corrections(b1, b2, count)
    # Per leaf: the vector step's update, or Adam's direction (lr applied below).
    out, new_mu, new_nu = [], [], []
    for g, w, m, v, a in zip(g_leaves, w_leaves, mu_leaves, nu_leaves, axes, strict=True):
      if a is None:  # Adam
        acc = acc_dtype(g)
        g32 = g.astype(acc)
        m_new = first_moment(g32, m.astype(acc), beta1)
        v_new = second_moment(g32, v.astype(acc), beta2)
        d = adam_direction(m_new, v_new, bc1, bc2, eps)
      else:
        d, m_new, v_new = _vector_step(
            w, g, m, v, a, lr_v, beta1, beta2, eps, bc1, bc2, axis_name
        )
      out.append(d)
      new_mu.append(m_new.astype(jnp.result_type(m)))
      new_nu.append(v_new.astype(jnp.result_type(v)))
    unflat = lambda x: jax.tree_util.tree_unflatten(treedef, x)
    # A schedule is read here (NDAdamState has no room for optax's count).
    rate = weight_decay(state.count) if callable(weight_decay) else weight_decay
    # d + λw on the leaves that are not vectors (a no-op for a literal 0).
    decay = optax.masked(decayed_weights(rate, weight_decay_mask),
                         unflat([a is None for a in axes]))
    out = treedef.flatten_up_to(decay.update(unflat(out), decay.init(params), params)[0])
    new_u = [
        (d if a is not None else -lr_s * d).astype(jnp.result_type(g))
        for d, g, a in zip(out, g_leaves, axes, strict=True)
    ]
    return unflat(new_u), NDAdamState(count=count, mu=unflat(new_mu), nu=unflat(new_nu))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

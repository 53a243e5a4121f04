"""Block-normalized gradients (BNG, Yu et al. 2017), SNGD and block clipping."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._numerics import acc_dtype
from normopt._numerics import inv_norm
from normopt._numerics import safe_sqrt
from normopt.blocks import block_norm_map
from normopt.blocks import BlockSpec
from normopt.blocks import check_blocks
from normopt.blocks import check_same_structure
from normopt.blocks import require_params
from normopt.blocks import StackedSpec
from normopt.blocks import with_layout
from normopt.norms import check_norm
from normopt.norms import check_preconditioning
from normopt.norms import DEFAULT_NS_COEFFS
from normopt.norms import directions
from normopt.norms import NormSpec
from normopt.norms import ns_coefficients


def _scale_leaves(updates, scales):
  """``g * s`` per leaf, computed in the scale's (float32+) dtype, cast back."""
  return jax.tree.map(
      lambda g, s: (g * s).astype(jnp.result_type(g)), updates, scales
  )


def block_normalize(
    blocks: BlockSpec = "layer",
    eps: float = 1e-12,
    axis_name: str | None = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    norm: NormSpec = "l2",
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    grouped: bool = True,
    gram: bool = False,
    preconditioning: str = "frobenius",
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces each block of the gradient by its unit direction under a norm.

  .. math::
    \tilde g_b = g_b / \max(\|g_b\|_2, \epsilon) \quad (\texttt{norm="l2"})

  With ``blocks="layer"`` this is the "NG" step of block-normalized gradient
  descent (BNG): each layer's kernel and bias together get unit norm, and the
  result feeds any optax optimizer. With ``blocks="global"`` it is the
  normalized gradient of SNGD. A zero block stays zero.

  ``norm`` picks the norm whose steepest direction replaces each block
  (:mod:`normopt.norms`): ``"l2"`` (above), ``"rms"`` (unit RMS: the ``"l2"``
  direction times ``√n_b``), ``"sign"`` (``sign(g)``: signSGD, and Signum
  after momentum) or ``"spectral"`` (the polar factor ``U Vᵀ`` of each
  leaf's matrix by Newton–Schulz: Muon's direction; ``blocks="leaf"`` only).
  A callable ``(path, leaf) -> name`` or a pytree prefix of names picks per
  leaf; the leaves of one block must share a norm.

  Args:
    blocks: ``"leaf"``, ``"layer"``, ``"global"``, ``"unit"`` or a callable
      ``(path, leaf) -> hashable`` (see :mod:`normopt.blocks`).
    eps: norms below ``eps`` divide by ``eps`` instead.
    axis_name: mapped axis across which leaves are sharded (``shard_map``,
      ``pmap``); partial squared norms are summed over it.
    stacked: stacked (scanned) leading axes per leaf: ``None``, a callable
      ``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a
      pytree prefix of ints (see :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, the output units of ``"unit"`` blocks and the matrices
      of ``"spectral"``.
    norm: ``"l2"``, ``"rms"``, ``"sign"``, ``"spectral"``, a callable
      ``(path, leaf) -> name`` or a pytree prefix of names.
    ns_steps: Newton–Schulz steps for ``"spectral"``.
    ns_coeffs: Newton–Schulz ``(a, b, c)``, one per step, or a preset name
      (``normopt.norms.NS_PRESETS``); default Muon's.
    grouped: orthogonalize the ``"spectral"`` matrices of equal shape and
      dtype together (split across the mesh's devices under a mesh);
      ``False`` runs each leaf on its own.
    gram: run ``"spectral"``'s Newton–Schulz in its Gram form
      (:func:`normopt.polar_factors`): fewer FLOPs for rectangular matrices
      (aspect ratio above about 2), the same iteration to float32 roundoff.
    preconditioning: how ``"spectral"`` scales each matrix before the first
      Newton–Schulz step: ``"frobenius"`` (divide by its Frobenius norm),
      ``"aol"`` or ``"schatten"``, as ``optax.contrib.muon``'s option of the
      same name (see :func:`normopt.polar_factors`).

  Returns:
    An ``optax.GradientTransformation`` with empty state.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> tx = normopt.block_normalize()
    >>> g = {"dense": {"kernel": jnp.full((4, 3), 5.0), "bias": jnp.full(3, 5.0)}}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> round(float(optax.tree.norm(u)), 4)
    1.0
    >>> spec = normopt.block_normalize(blocks="leaf", norm="spectral",
    ...                                ns_coeffs="cubic", ns_steps=40)
    >>> g = {"w": jnp.array([[3.0, 0.0], [0.0, 0.5]])}
    >>> u, _ = spec.update(g, spec.init(g))
    >>> [round(float(s), 3) for s in jnp.linalg.svd(u["w"], compute_uv=False)]
    [1.0, 1.0]

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017;
    Bernstein and Newhouse, `Old Optimizer, New Norm: An Anthology
    <https://arxiv.org/abs/2409.20325>`_, 2024; Jordan et al., `Muon
    <https://kellerjordan.github.io/posts/muon/>`_, 2024.
  """
  stacked = with_layout(stacked, layout)
  check_blocks(blocks, "block_normalize")
  check_norm(norm, blocks, axis_name, "block_normalize")
  ns_coefficients(ns_coeffs, ns_steps)  # raises early on bad coefficients
  check_preconditioning(preconditioning)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if not (isinstance(norm, str) and norm == "l2"):
      return directions(
          updates, norm=norm, blocks=blocks, stacked=stacked,
          axis_name=axis_name, eps=eps, ns_steps=ns_steps,
          ns_coeffs=ns_coeffs, grouped=grouped, gram=gram, name="block_normalize",
          preconditioning=preconditioning,
      ), state
    scales = block_norm_map(
        lambda n: inv_norm(n, eps), updates,
        blocks=blocks, stacked=stacked, axis_name=axis_name,
    )
    return _scale_leaves(updates, scales), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def ngadap_scale(
    alpha: float = 0.02,
    blocks: BlockSpec = "layer",
    eps: float = 1e-12,
    axis_name: str | None = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    min_param_norm: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each gradient block to ``alpha`` times its parameters' norm.

  .. math::
    \tilde g_b = \alpha \, r_b \, g_b / \max(\|g_b\|_2, \epsilon), \qquad
    r_b = \begin{cases} \max(\|w_b\|_2, \rho) & \|w_b\|_2 > 0 \\
                        1 & \|w_b\|_2 = 0 \end{cases}

  This is BNG's "NG_adap": the step taken on a block is proportional to the
  size of that block's weights, so that the relative change per step is about
  ``alpha`` times the learning rate.

  The paper's rule, by default (``rho = min_param_norm = 0``): ``r_b =
  ‖w_b‖`` for every block whose parameters are not all zero. Only a block
  whose parameters are all zero (a zero-initialized bias with
  ``blocks="leaf"``) falls back to ``r_b = 1``, i.e. a plain normalized step of
  size ``alpha``, as optax's trust ratio uses 1 where a norm is zero; without
  the fallback such a block would never move. ``min_param_norm = rho > 0``
  floors every parameter norm at ``rho`` (an ablation, not the paper's rule:
  small blocks then move like plain NG with step ``alpha * rho``).

  Args:
    alpha: relative step size (the paper's ``α``, default 0.02).
    blocks: block mode or callable (see :mod:`normopt.blocks`).
    eps: gradient norms below ``eps`` divide by ``eps``.
    axis_name: mapped axis across which leaves are sharded.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    min_param_norm: floor ``rho`` on the parameter norm; 0 (default) is the
      paper's rule (see above).

  Returns:
    An ``optax.GradientTransformation`` with empty state; ``update`` needs
    ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> tx = normopt.ngadap_scale(alpha=0.1)
    >>> w = {"dense": {"kernel": jnp.full((4, 4), 5.0)}}   # ‖w‖ = 20
    >>> g = {"dense": {"kernel": jnp.full((4, 4), 3.0)}}
    >>> u, _ = tx.update(g, tx.init(w), w)
    >>> round(float(optax.tree.norm(u)), 4)               # 0.1 * 20
    2.0

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  stacked = with_layout(stacked, layout)
  check_blocks(blocks, "ngadap_scale")
  # A traced value (optax.inject_hyperparams) cannot be checked here.
  if isinstance(min_param_norm, (int, float)) and not min_param_norm >= 0:
    raise ValueError(
        f"ngadap_scale: min_param_norm must be >= 0, got {min_param_norm!r}")

  def param_scale(wn):
    # The paper's ‖w_b‖ (floored at rho if asked); 1 for an all-zero block.
    return jnp.where(wn > 0, jnp.maximum(wn, min_param_norm), 1.0)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "ngadap_scale")
    check_same_structure(updates, params, "ngadap_scale")
    scales = block_norm_map(
        lambda gn, wn: alpha * param_scale(wn) * inv_norm(gn, eps),
        updates,
        params,
        blocks=blocks,
        stacked=stacked,
        axis_name=axis_name,
    )
    return _scale_leaves(updates, scales), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def clip_block_norm(
    max_norm: float,
    blocks: BlockSpec = "layer",
    axis_name: str | None = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales each block whose norm exceeds ``max_norm`` down to ``max_norm``.

  .. math::
    \tilde g_b = g_b \cdot \frac{c}{\max(\|g_b\|_2, c)}

  The per-layer clipping baseline ("CLIP") of the BNG paper. Blocks at or
  below ``c = max_norm`` pass unchanged; no division by a zero norm happens
  for ``max_norm > 0``.

  Args:
    max_norm: the largest block norm let through (``> 0``).
    blocks: block mode or callable (see :mod:`normopt.blocks`).
    axis_name: mapped axis across which leaves are sharded.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.

  Returns:
    An ``optax.GradientTransformation`` with empty state.

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> tx = normopt.clip_block_norm(1.0)
    >>> g = {"a": {"w": jnp.full(4, 3.0)}, "b": {"w": jnp.full(4, 0.1)}}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> round(float(optax.tree.norm(u["a"])), 4), round(float(optax.tree.norm(u["b"])), 4)
    (1.0, 0.2)

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  stacked = with_layout(stacked, layout)
  check_blocks(blocks, "clip_block_norm")

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    scales = block_norm_map(
        lambda n: max_norm / jnp.maximum(n, max_norm), updates,
        blocks=blocks, stacked=stacked, axis_name=axis_name,
    )
    return _scale_leaves(updates, scales), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


class ScaleByAdagradBNGState(NamedTuple):
  """State of :func:`scale_by_adagrad_bng`: sum of squared normalized grads."""

  sum_of_squares: Any


def scale_by_adagrad_bng(
    delta: float = 1e-8,
    blocks: BlockSpec = "layer",
    eps: float = 1e-12,
    axis_name: str | None = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad on block-normalized gradients (BNG appendix, Algorithm 2).

  .. math::
    \hat g_b = g_b / \|g_b\|, \quad
    s_t = \sqrt{\textstyle\sum_{\tau \le t} \hat g_\tau^2}, \quad
    u_t = \|g_b\| \, \hat g_b / (\delta + s_t)

  The accumulator sees only the *direction* of each block; the step keeps the
  block's magnitude ``‖g_b‖``. (``‖g_b‖ ĝ_b = g_b``; a zero block gives 0.)

  Args:
    delta: the additive constant ``δ`` in the denominator.
    blocks: block mode or callable (see :mod:`normopt.blocks`).
    eps: gradient norms below ``eps`` divide by ``eps``.
    axis_name: mapped axis across which leaves are sharded.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.

  Returns:
    An ``optax.GradientTransformation``; the update is to be scaled by
    ``-learning_rate`` (see :func:`normopt.adagrad_bng`).

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.scale_by_adagrad_bng()
    >>> g = {"w": jnp.array([3.0, 4.0])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> [round(float(x), 4) for x in u["w"]]   # ‖g‖ ĝ / |ĝ| = 5 per coordinate
    [5.0, 5.0]

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  stacked = with_layout(stacked, layout)
  check_blocks(blocks, "scale_by_adagrad_bng")

  def init_fn(params):
    return ScaleByAdagradBNGState(
        sum_of_squares=jax.tree.map(
            # zeros_like keeps the parameter's sharding (jnp.zeros would not).
            lambda p: jnp.zeros_like(p, dtype=acc_dtype(p)), params
        )
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    norms, inv = block_norm_map(
        lambda n: (n, inv_norm(n, eps)), updates,
        blocks=blocks, stacked=stacked, axis_name=axis_name,
    )
    g_hat = jax.tree.map(lambda g, i: g.astype(i.dtype) * i, updates, inv)
    sum_sq = jax.tree.map(
        lambda s, gh: s + jnp.square(gh), state.sum_of_squares, g_hat
    )
    out = jax.tree.map(
        lambda g, gh, n, s: (n * gh / (delta + safe_sqrt(s))).astype(
            jnp.result_type(g)
        ),
        updates,
        g_hat,
        norms,
        sum_sq,
    )
    return out, ScaleByAdagradBNGState(sum_of_squares=sum_sq)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


"""ND-Adam (normopt.spherical, normopt.nd_adam) against a float64 NumPy reference."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt

SHAPES = {
    "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "dense": {"kernel": (6, 3), "bias": (3,)},
    "bn": {"scale": (4,)},
}


def _tree(rng, scale=1.0, dtype=jnp.float32):
  return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.normal(size=s), dtype),
      SHAPES,
      is_leaf=lambda x: isinstance(x, tuple),
  )


# ---------------------------------------------------------------- reference


def _np_axes(x):
  """The unit rule, written independently: all axes but the last, ndim >= 2."""
  return None if x.ndim < 2 else tuple(range(x.ndim - 1))


def np_nd_adam(params, grads_seq, lr_v, lr_s, b1=0.9, b2=0.999, eps=1e-8):
  """ND-Adam Algorithm 1 (vectors) and Adam (the rest), float64, plain loops.

  ``lr_v``/``lr_s`` are callables ``step (from 0) -> rate``.
  """
  flat, treedef = jax.tree.flatten(params)
  w = [np.asarray(x, np.float64) for x in flat]
  m = [np.zeros_like(x) for x in w]
  v = [np.zeros_like(x) if _np_axes(x) is None
       else np.zeros_like(np.sum(x, axis=_np_axes(x), keepdims=True)) for x in w]
  for t, grads in enumerate(grads_seq, start=1):
    gs = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    for i, (x, g) in enumerate(zip(w, gs, strict=True)):
      ax = _np_axes(x)
      if ax is None:  # Adam
        m[i] = b1 * m[i] + (1 - b1) * g
        v[i] = b2 * v[i] + (1 - b2) * g * g
        mh, vh = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
        w[i] = x - lr_s(t - 1) * mh / (np.sqrt(vh) + eps)
      else:  # eq. 12, eqs. 8-11, renormalization
        xh = x / np.sqrt(np.sum(x * x, axis=ax, keepdims=True))
        gb = g - np.sum(g * xh, axis=ax, keepdims=True) * xh
        m[i] = b1 * m[i] + (1 - b1) * gb
        v[i] = b2 * v[i] + (1 - b2) * np.sum(gb * gb, axis=ax, keepdims=True)
        mh, vh = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
        wb = x - lr_v(t - 1) * mh / (np.sqrt(vh) + eps)
        w[i] = wb / np.sqrt(np.sum(wb * wb, axis=ax, keepdims=True))
  return jax.tree.unflatten(treedef, w)


def _run(tx, params, grads_seq):
  state = tx.init(params)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  for g in grads_seq:
    params, state = step(params, state, g)
  return params, state


# ---------------------------------------------------------------- tests


def test_nd_adam_matches_numpy_algorithm_1():
  rng = np.random.default_rng(0)
  params = normopt.normalize_vectors(_tree(rng))
  grads = [_tree(rng) for _ in range(6)]
  got, _ = _run(normopt.nd_adam(0.05, 0.01), params, grads)
  want = np_nd_adam(params, grads, lambda t: 0.05, lambda t: 0.01)
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-6)


def test_nd_adam_schedules_for_both_rates():
  rng = np.random.default_rng(1)
  params = normopt.normalize_vectors(_tree(rng))
  grads = [_tree(rng) for _ in range(5)]
  sv = optax.cosine_decay_schedule(0.1, 5)
  ss = optax.linear_schedule(0.02, 0.0, 5)
  got, _ = _run(normopt.nd_adam(sv, ss), params, grads)
  want = np_nd_adam(params, grads, lambda t: float(sv(t)), lambda t: float(ss(t)))
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-6)


def test_primitives_match_reference_from_off_sphere_start():
  """project -> vector adam -> lr -> retract equals Algorithm 1 even when w is
  not unit-norm at the start (the projection uses ŵ)."""
  rng = np.random.default_rng(2)
  params = {"k": jnp.asarray(3.0 * rng.normal(size=(5, 4)), jnp.float32)}
  grads = [{"k": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)} for _ in range(4)]
  tx = optax.chain(
      normopt.spherical_project(),
      normopt.scale_by_vector_adam(b1=0.8, b2=0.99, eps=1e-6),
      optax.scale_by_learning_rate(0.1),
      normopt.spherical_retract(),
  )
  got, _ = _run(tx, params, grads)
  want = np_nd_adam(params, grads, lambda t: 0.1, None, b1=0.8, b2=0.99, eps=1e-6)
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-6)


def test_scale_by_vector_adam_on_non_vectors_is_adam():
  rng = np.random.default_rng(3)
  params = {"b": jnp.asarray(rng.normal(size=7), jnp.float32)}
  grads = [{"b": jnp.asarray(rng.normal(size=7), jnp.float32)} for _ in range(4)]
  ours = optax.chain(normopt.scale_by_vector_adam(), optax.scale_by_learning_rate(0.1))
  got, _ = _run(ours, params, grads)
  want, _ = _run(optax.adam(0.1), params, grads)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_vectors_stay_unit_norm_over_200_float32_steps():
  rng = np.random.default_rng(4)
  params = normopt.normalize_vectors(_tree(rng))
  tx = normopt.nd_adam(0.2, 1e-3)
  g_seq = jnp.asarray(rng.normal(size=(200, 2)), jnp.float32)

  def loss(p, c):  # a loss whose gradient changes every step
    return sum(jnp.sum(jnp.sin(c[0] * x + c[1])) for x in jax.tree.leaves(p))

  def body(carry, c):
    p, s = carry
    u, s = tx.update(jax.grad(loss)(p, c), s, p)
    return (optax.apply_updates(p, u), s), None

  (p, _), _ = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), g_seq))(params, tx.init(params))
  for k in ("conv", "dense"):
    w = np.asarray(p[k]["kernel"], np.float64)
    norms = np.sqrt(np.sum(w * w, axis=tuple(range(w.ndim - 1))))
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)
    # the vectors did move
    assert np.max(np.abs(w - np.asarray(params[k]["kernel"]))) > 0.1


def test_projected_gradient_is_orthogonal_to_its_vector():
  rng = np.random.default_rng(5)
  params = _tree(rng, scale=3.0)  # not on the sphere
  grads = _tree(rng)
  tx = normopt.spherical_project()
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for k in ("conv", "dense"):
    w, g = np.asarray(params[k]["kernel"]), np.asarray(u[k]["kernel"])
    ax = tuple(range(w.ndim - 1))
    cos = np.sum(w * g, axis=ax) / np.sqrt(np.sum(w * w, axis=ax) * np.sum(g * g, axis=ax))
    np.testing.assert_allclose(cos, 0.0, atol=1e-6)
    assert np.all(np.sum(g * g, axis=ax) > 1e-3)  # not trivially zero
  # leaves that are not vectors pass through untouched
  chex.assert_trees_all_equal(u["conv"]["bias"], grads["conv"]["bias"])
  chex.assert_trees_all_equal(u["bn"]["scale"], grads["bn"]["scale"])


def test_state_is_smaller_than_adams():
  params = {"conv": {"kernel": jnp.zeros((3, 3, 64, 64)), "bias": jnp.zeros(64)},
            "dense": {"kernel": jnp.zeros((256, 10)), "bias": jnp.zeros(10)}}
  ours = optax.tree.size(normopt.scale_by_vector_adam().init(params))
  adam = optax.tree.size(optax.scale_by_adam().init(params))
  n = optax.tree.size(params)
  # 1 count + mu (n) + nu: one scalar per vector (64 + 10) plus the biases.
  assert ours == 1 + n + (64 + 10) + (64 + 10)
  assert adam == 1 + 2 * n
  print(f"state size: scale_by_vector_adam {ours}, scale_by_adam {adam} "
        f"({ours / adam:.3f} of Adam's)")
  assert ours < 0.51 * adam


def test_custom_vector_axes():
  """A callable picks only Conv kernels; the Dense kernel then gets Adam."""
  conv_only = lambda path, leaf: (0, 1, 2) if leaf.ndim == 4 else None
  rng = np.random.default_rng(6)
  params = normopt.normalize_vectors(_tree(rng), conv_only)
  np.testing.assert_allclose(
      np.linalg.norm(np.asarray(params["conv"]["kernel"]).reshape(-1, 4), axis=0), 1.0, rtol=1e-6)
  assert abs(float(jnp.linalg.norm(params["dense"]["kernel"][:, 0])) - 1.0) > 1e-2
  grads = [_tree(rng) for _ in range(3)]
  got, _ = _run(normopt.nd_adam(0.05, 0.01, vector_axes=conv_only), params, grads)
  want_adam, _ = _run(optax.adam(0.01), params, grads)
  chex.assert_trees_all_close(got["dense"], want_adam["dense"], rtol=1e-5, atol=1e-6)
  w = np.asarray(got["conv"]["kernel"]).reshape(-1, 4)
  np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-6)
  # A vector over an input axis of a Dense kernel: rows instead of columns.
  rows = lambda path, leaf: (1,) if leaf.ndim == 2 else None
  q = normopt.normalize_vectors({"k": jnp.full((2, 4), 3.0)}, rows)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(q["k"]), axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("make", [normopt.spherical_project, normopt.spherical_retract,
                                  functools.partial(normopt.nd_adam, 0.1, 0.1)])
def test_params_none_and_mismatched_trees(make):
  tx = make()
  w = {"k": jnp.ones((3, 2))}
  state = tx.init(w)
  name = getattr(make, "__name__", None) or make.func.__name__
  with pytest.raises(ValueError, match=name):
    tx.update(w, state, None)
  with pytest.raises(ValueError, match="tree structures"):
    tx.update(w, state, {"k": jnp.ones((3, 2)), "extra": jnp.ones(2)})


def test_bad_vector_axes():
  w = {"k": jnp.ones((3, 2))}
  with pytest.raises(ValueError, match="vector_axes"):
    normopt.normalize_vectors(w, lambda p, x: (5,))
  with pytest.raises(ValueError, match="vector_axes"):
    normopt.spherical_project(vector_axes=(0,)).update(w, optax.EmptyState(), w)
  with pytest.raises(ValueError, match="vector_axes"):
    normopt.scale_by_vector_adam(vector_axes=lambda p, x: "rows").init(w)


def test_zero_vectors_and_zero_gradients_stay_finite():
  w = {"k": jnp.zeros((3, 2)).at[:, 1].set(jnp.array([0.0, 0.6, 0.8])),
       "b": jnp.zeros(2)}
  g0 = jax.tree.map(jnp.zeros_like, w)
  g1 = jax.tree.map(jnp.ones_like, w)
  tx = normopt.nd_adam(0.1, 0.1)
  s = tx.init(w)
  update = jax.jit(tx.update)
  u, s = update(g0, s, w)  # zero gradient: no move at all
  chex.assert_trees_all_equal(u, g0)
  u, s = update(g1, s, w)
  chex.assert_tree_all_finite((u, s))
  new = optax.apply_updates(w, u)
  # The zero column leaves zero along the (unprojected) gradient onto the sphere;
  # the unit column stays on it.
  np.testing.assert_allclose(np.linalg.norm(np.asarray(new["k"]), axis=0), 1.0, rtol=1e-6)
  # Normalizing a zero vector gives zero; its gradient through jax.grad is finite.
  z = {"k": jnp.zeros((3, 2))}
  chex.assert_trees_all_equal(normopt.normalize_vectors(z), z)
  grad = jax.grad(lambda p: jnp.sum(normopt.normalize_vectors(p)["k"]))(z)
  chex.assert_tree_all_finite(grad)
  # Retraction onto the origin (w + u = 0) leaves w in place.
  r = normopt.spherical_retract()
  wk = {"k": w["k"]}
  u, _ = r.update({"k": -w["k"]}, r.init(wk), wk)
  chex.assert_trees_all_equal(u["k"], jnp.zeros((3, 2)))


def test_axis_name_sharded_input_axis_matches_unsharded():
  """Vectors split over their input axis across a named vmap axis (as in
  shard_map) give the same steps as the whole vectors."""
  rng = np.random.default_rng(7)
  w = normopt.normalize_vectors({"k": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)})
  gs = [{"k": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)} for _ in range(3)]
  want, _ = _run(normopt.nd_adam(0.1, 0.1), w, gs)

  tx = normopt.nd_adam(0.1, 0.1, axis_name="shard")
  split = lambda t: jax.tree.map(lambda x: x.reshape(2, 4, 3), t)
  p = split(w)
  s = jax.vmap(tx.init)(p)
  step = jax.jit(jax.vmap(lambda p, s, g: tx.update(g, s, p), axis_name="shard"))
  for g in gs:
    u, s = step(p, s, split(g))
    p = optax.apply_updates(p, u)
  chex.assert_trees_all_close(jax.tree.map(lambda x: x.reshape(8, 3), p), want,
                              rtol=1e-5, atol=1e-6)


class _CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3), strides=2)(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_nd_adam_trains_a_flax_cnn():
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x = jnp.asarray(x[:64, :].reshape(-1, 8, 8, 1) / 16.0, jnp.float32)
  y = jnp.asarray(y[:64])
  model = _CNN()
  params = normopt.normalize_vectors(model.init(jax.random.key(0), x[:1]))
  conv = lambda path, leaf: (0, 1, 2) if leaf.ndim == 4 else None

  def loss(p):
    logits = model.apply(p, x)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            + normopt.losses.logit_l2_penalty(logits, 1e-3))

  tx = normopt.nd_adam(0.1, 3e-2, vector_axes=conv)

  @jax.jit
  def train(p):
    def body(c, _):
      p, s = c
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (p, tx.init(p)), None, length=40)[0][0]

  p = train(params)
  l0, l1 = float(loss(params)), float(loss(p))
  assert l1 < 0.5 * l0, (l0, l1)
  k = np.asarray(p["params"]["Conv_0"]["kernel"]).reshape(-1, 6)
  np.testing.assert_allclose(np.linalg.norm(k, axis=0), 1.0, rtol=1e-5)


# ------------------------------------------------ the fused nd_adam step
# nd_adam computes its step fused (normopt.spherical._vector_step): the
# norms the chain takes one after another come from three sums.


@pytest.mark.parametrize("start", ["sphere", "off_sphere"])
def test_fused_step_matches_numpy_algorithm_1(start):
  rng = np.random.default_rng(8)
  params = _tree(rng, scale=3.0)
  if start == "sphere":
    params = normopt.normalize_vectors(params)
  # gradients of changing scale, and a step where m and g point apart
  grads = [_tree(rng, scale=10.0 ** (i % 3 - 1)) for i in range(7)]
  tx = normopt.nd_adam(0.1, 0.01, b1=0.8, b2=0.99, eps=1e-6)
  got, state = _run(tx, params, grads)
  want = np_nd_adam(params, grads, lambda t: 0.1, lambda t: 0.01, b1=0.8, b2=0.99, eps=1e-6)
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-6)
  assert int(state.count) == len(grads)


def test_fused_step_zero_vectors_zero_gradients_and_radial_gradients():
  # column 0: zero vector; column 1: unit vector; column 2: unit vector whose
  # gradient is radial (its projection is exactly zero).
  k = np.zeros((3, 3), np.float32)
  k[:, 1] = [0.0, 0.6, 0.8]
  k[:, 2] = [1.0, 0.0, 0.0]
  w = {"k": jnp.asarray(k), "b": jnp.zeros(3)}
  tx = normopt.nd_adam(0.1, 0.1)
  update = jax.jit(tx.update)
  s = tx.init(w)
  zeros = jax.tree.map(jnp.zeros_like, w)
  u, s = update(zeros, s, w)
  chex.assert_trees_all_equal(u, zeros)
  g = {"k": jnp.asarray(np.stack([np.ones(3), np.ones(3), [5.0, 0, 0]], 1), jnp.float32),
       "b": jnp.ones(3)}
  for _ in range(3):
    u, s = update(g, s, w)
    chex.assert_tree_all_finite((u, s))
    w = optax.apply_updates(w, u)
  norms = np.linalg.norm(np.asarray(w["k"]), axis=0)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
  # the radial gradient left its vector where it was
  np.testing.assert_allclose(np.asarray(w["k"])[:, 2], [1.0, 0.0, 0.0], atol=1e-7)


def test_nd_adam_state_is_smaller_than_adams_and_matches_init_types():
  params = {"conv": {"kernel": jnp.zeros((3, 3, 8, 16)), "bias": jnp.zeros(16)}}
  tx = normopt.nd_adam()
  s0 = tx.init(params)
  assert isinstance(s0, normopt.spherical.NDAdamState)
  n = optax.tree.size(params)
  assert optax.tree.size(s0) == 1 + n + 16 + 16
  assert optax.tree.size(s0) < 0.6 * optax.tree.size(optax.adam(1e-3).init(params))
  _, s1 = jax.jit(tx.update)(params, s0, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(s0, s1)


def test_fused_step_in_bfloat16_matches_float32_step():
  rng = np.random.default_rng(9)
  p32 = normopt.normalize_vectors(_tree(rng))
  grads = [_tree(rng) for _ in range(3)]
  tx = normopt.nd_adam(0.05, 0.01)
  want, _ = _run(tx, p32, grads)
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32)
  got, state = _run(tx, p16, [jax.tree.map(lambda x: x.astype(jnp.bfloat16), g) for g in grads])
  chex.assert_trees_all_equal_dtypes(got, p16)
  assert state.nu["dense"]["kernel"].dtype == jnp.float32
  chex.assert_trees_all_close(jax.tree.map(lambda x: x.astype(jnp.float32), got), want,
                              atol=3e-2)

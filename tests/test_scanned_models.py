"""Scanned (stacked) models train exactly as their unrolled twins.

DESIGN.md §1 "Stacked (scanned) layers": a leaf whose leading axis indexes L
scanned layers, optimized with ``stacked=normopt.stacked_under("layers")``,
must behave as the L separate leaves of the model unrolled, to float32
roundoff. Here real models check that end to end:

* Flax Linen: ``nn.scan`` over a residual LayerNorm + Dense block;
* Flax NNX: blocks made with ``nnx.split_rngs`` + ``nnx.vmap`` and applied
  with ``nnx.scan``, trained through ``nnx.Optimizer``;
* Equinox: ``eqx.filter_vmap``-ed ``eqx.nn.Linear`` layers applied with
  ``lax.scan``.

Each scanned model has a twin that applies L separate blocks (``layers_0``
... or a list) holding slice i of every stacked leaf. Both train a few
jitted steps on the same synthetic batch, with ``adam_ng`` and ``nd_adam``
(``stacked=`` on the scanned one only); after every step the scanned params,
sliced, must equal the twin's. Block i's residual branch is scaled by
``SCALES[i]`` (1e-3 ... 10), so the layers' gradient norms differ by orders
of magnitude; the negative controls (the same optimizer WITHOUT ``stacked``
on the scanned model, which then normalizes across layers) must deviate.

Equinox caveat (known, not tested here): ``eqx.nn.Linear`` stores its weight
``(out, in)``, so the default ``"unit"`` rule (vectors over all axes but the
last) makes one vector per *input* there, not per output unit.
"""

import functools

import chex
import equinox as eqx
from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from subproc import CHEAP_COMPILE_OPTIONS

# End-to-end trainings of Flax and Equinox models, the stacked check's
# complement: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

L = 4  # scanned layers
D_IN, D, C = 6, 16, 5  # input features, width, classes
BATCH = 8
STEPS = 5
SCALES = (1e-3, 1e-1, 1.0, 10.0)  # residual scale of block i: gradient norms differ a lot
RTOL, ATOL = 1e-5, 1e-6  # float32 roundoff
NEG_MIN_DEV = 1e-3  # a model trained without `stacked` must be at least this far off
SPEC = normopt.stacked_under("layers")

# XLA's CPU backend at LLVM -O0 compiles these scanned steps about twice as
# fast; compiling dominates this file's time, and both twins get the same.
# Always with the current fusion emitters: -O0 with the older ones, which
# this session's XLA_FLAGS select (tests/subproc.py), miscompiles.
_jit = functools.partial(jax.jit, compiler_options=CHEAP_COMPILE_OPTIONS)


def _batch():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(BATCH, D_IN)).astype(np.float32)
  y = rng.integers(0, C, size=BATCH)
  return jnp.asarray(x), jnp.asarray(y)


def _xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _np(tree):
  """The tree on the host (NumPy leaves): slicing it costs no dispatch."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _max_dev(a, b):
  """Largest elementwise |a - b| over two trees of the same structure."""
  a, b = _np(a), _np(b)
  chex.assert_trees_all_equal_shapes(a, b)
  devs = jax.tree.map(lambda u, v: float(np.max(np.abs(u - v))), a, b)
  return max(jax.tree.leaves(devs))


def _record(model, opt, dev):
  """Prints a twin pair's largest deviation (``pytest -s`` shows them)."""
  print(f"\n[scanned-vs-unrolled] {model:6s} {opt:22s} max |dev| = {dev:.3e}")


def _slice(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def _train(loss, params, tx, steps=STEPS):
  """Params after each of ``steps`` jitted steps of ``tx`` on ``loss``."""

  @_jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = _jit(tx.init)(params)
  out = []
  for _ in range(steps):
    params, state = step(params, state)
    out.append(_np(params))
  return out


def _match(traj_scanned, traj_unrolled, unroll):
  """Asserts the twins agree after every step; the largest deviation."""
  worst = 0.0
  for t, (ps, pu) in enumerate(zip(traj_scanned, traj_unrolled, strict=True)):
    chex.assert_trees_all_close(
        unroll(ps), pu, rtol=RTOL, atol=ATOL, custom_message=f"after step {t + 1}"
    )
    worst = max(worst, _max_dev(unroll(ps), pu))
  return worst


# --- Flax Linen: nn.scan ----------------------------------------------------

class LinenBlock(nn.Module):
  """Residual block: ``x + s * tanh(Dense(LayerNorm(x)))``, scan-shaped."""

  d: int

  @nn.compact
  def __call__(self, x, s):
    h = nn.Dense(self.d, name="dense")(nn.LayerNorm(name="norm")(x))
    return x + s * jnp.tanh(h), None


class LinenScanned(nn.Module):
  """Embedding, L blocks in one ``nn.scan`` named "layers", head."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(D, name="embed")(x)
    stack = nn.scan(
        LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=0, length=L,
    )
    x, _ = stack(D, name="layers")(x, jnp.asarray(SCALES, jnp.float32))
    return nn.Dense(C, name="head")(x)


class LinenUnrolled(nn.Module):
  """The twin: the same blocks applied one by one as ``layers_0 ...``."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(D, name="embed")(x)
    for i, s in enumerate(SCALES):
      x, _ = LinenBlock(D, name=f"layers_{i}")(x, jnp.float32(s))
    return nn.Dense(C, name="head")(x)


def _linen_unroll(params):
  """Scanned Linen params -> the twin's: slice i of "layers" is ``layers_i``."""
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(L):
    out[f"layers_{i}"] = _slice(params["layers"], i)
  return out


def _tx(opt, stacked):
  """The optimizer under test, with or without ``stacked=SPEC``."""
  spec = SPEC if stacked else None
  if opt == "adam_ng":
    return normopt.adam_ng(1e-2, stacked=spec)
  return normopt.nd_adam(0.05, 1e-3, stacked=spec)


_NORMALIZE = {
    True: _jit(functools.partial(normopt.normalize_vectors, stacked=SPEC)),
    False: _jit(normopt.normalize_vectors),
}


def _normalize(params, stacked):
  """``normalize_vectors`` (ND-Adam's starting point), jitted."""
  return _NORMALIZE[stacked](params)


@pytest.fixture(scope="module")
def linen():
  """The Linen twins, their starting params per optimizer, and a cache of
  the unrolled twin's trajectory per optimizer (shared by the tests)."""
  x, y = _batch()
  scanned, unrolled = LinenScanned(), LinenUnrolled()
  params = _np(_jit(scanned.init)(jax.random.key(1), x)["params"])
  assert params["layers"]["dense"]["kernel"].shape == (L, D, D)
  twin = _linen_unroll(params)
  # The converter gives exactly the twin's tree, and both compute the same.
  ref = jax.eval_shape(unrolled.init, jax.random.key(2), x)["params"]
  chex.assert_trees_all_equal_structs(twin, ref)
  jax.tree.map(lambda a, r: np.testing.assert_equal(a.shape, r.shape), twin, ref)
  loss_s = lambda p: _xent(scanned.apply({"params": p}, x), y)
  loss_u = lambda p: _xent(unrolled.apply({"params": p}, x), y)
  out_s, out_u, grads = _jit(
      lambda p, q: (scanned.apply({"params": p}, x), unrolled.apply({"params": q}, x),
                    jax.grad(loss_s)(p))
  )(params, twin)
  chex.assert_trees_all_close(out_s, out_u, rtol=RTOL, atol=ATOL)
  # The layers' gradient norms span orders of magnitude (what makes the
  # negative controls bite).
  g = _linen_unroll(_np(grads))
  norms = [float(optax.tree.norm(g[f"layers_{i}"]["dense"])) for i in range(L)]
  assert max(norms) > 100 * min(norms), norms
  starts = {
      "adam_ng": (params, twin),
      "nd_adam": (_normalize(params, True), _normalize(twin, False)),
  }

  @functools.cache
  def twin_traj(opt):
    return _train(loss_u, starts[opt][1], _tx(opt, False))

  return loss_s, starts, twin_traj


def test_linen_normalize_vectors_matches_unrolled(linen):
  _, starts, _ = linen
  (params, _), (p_s, p_u) = starts["adam_ng"], starts["nd_adam"]
  chex.assert_trees_all_close(_linen_unroll(p_s), p_u, rtol=RTOL, atol=ATOL)
  _record("linen", "normalize_vectors", _max_dev(_linen_unroll(p_s), p_u))
  assert _max_dev(params, p_s) > 1e-2  # it did normalize
  # Each slice's kernel columns are unit vectors, the LayerNorm scales (not
  # vectors once the stack axis is off) are untouched.
  np.testing.assert_allclose(
      np.linalg.norm(p_s["layers"]["dense"]["kernel"], axis=1), 1.0, rtol=1e-5
  )
  np.testing.assert_array_equal(p_s["layers"]["norm"]["scale"], 1.0)
  # Without `stacked` the kernels' vectors would span the layers (and the
  # stacked LayerNorm scales (L, d) would be taken for vectors).
  assert _max_dev(_linen_unroll(_normalize(params, False)), p_u) > NEG_MIN_DEV


@pytest.mark.parametrize("opt", ["adam_ng", "nd_adam"])
def test_linen_matches_unrolled(linen, opt):
  loss_s, starts, twin_traj = linen
  start_s, start_u = starts[opt]
  traj_s = _train(loss_s, start_s, _tx(opt, True))
  traj_u = twin_traj(opt)
  _record("linen", opt, _match(traj_s, traj_u, _linen_unroll))
  # Every layer moved, the tiny-gradient one included.
  for i in range(L):
    assert _max_dev(start_u[f"layers_{i}"], traj_u[-1][f"layers_{i}"]) > 1e-2
  if opt == "nd_adam":
    # Kernel columns stay unit vectors; the LayerNorm scale is a scalar
    # (Adam) leaf and moves off 1.
    last = traj_s[-1]["layers"]
    np.testing.assert_allclose(
        np.linalg.norm(last["dense"]["kernel"], axis=1), 1.0, rtol=1e-5
    )
    assert np.max(np.abs(last["norm"]["scale"] - 1.0)) > 1e-3


@pytest.mark.parametrize("opt", ["adam_ng", "nd_adam"])
def test_linen_without_stacked_deviates(linen, opt):
  loss_s, starts, twin_traj = linen
  traj_s = _train(loss_s, starts[opt][0], _tx(opt, False))
  dev = _max_dev(_linen_unroll(traj_s[-1]), twin_traj(opt)[-1])
  _record("linen", f"{opt} (no stacked)", dev)
  assert dev > NEG_MIN_DEV


# --- Flax NNX: nnx.vmap + nnx.scan, nnx.Optimizer ---------------------------

class NNXBlock(nnx.Module):
  """Residual block: ``x + s * tanh(Linear(LayerNorm(x)))``."""

  def __init__(self, d, rngs):
    self.norm = nnx.LayerNorm(d, rngs=rngs)
    self.linear = nnx.Linear(d, d, rngs=rngs)

  def __call__(self, x, s):
    return x + s * jnp.tanh(self.linear(self.norm(x)))


class NNXScanned(nnx.Module):
  """The NNX "scan over layers" pattern: one stacked ``layers`` attribute."""

  def __init__(self, rngs):
    self.embed = nnx.Linear(D_IN, D, rngs=rngs)

    @nnx.split_rngs(splits=L)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
      return NNXBlock(D, rngs)

    self.layers = create(rngs)
    self.head = nnx.Linear(D, C, rngs=rngs)

  def __call__(self, x):
    x = self.embed(x)

    @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
    def forward(x, block, s):
      return block(x, s)

    x = forward(x, self.layers, jnp.asarray(SCALES, jnp.float32))
    return self.head(x)


class NNXUnrolled(nnx.Module):
  """The twin: an ``nnx.List`` of L blocks applied one by one."""

  def __init__(self, rngs):
    self.embed = nnx.Linear(D_IN, D, rngs=rngs)
    self.blocks = nnx.List([NNXBlock(D, rngs) for _ in range(L)])
    self.head = nnx.Linear(D, C, rngs=rngs)

  def __call__(self, x):
    x = self.embed(x)
    for block, s in zip(self.blocks, SCALES, strict=True):
      x = block(x, jnp.float32(s))
    return self.head(x)


def _nnx_params(model):
  """A model's params as plain nested NumPy dicts, scanned ones unrolled."""
  p = _np(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  if "layers" in p:
    layers = p.pop("layers")
    p["blocks"] = {i: _slice(layers, i) for i in range(L)}
  return p


def _nnx_make_scanned():
  return NNXScanned(nnx.Rngs(1))


@functools.cache
def _nnx_scanned_values():
  """The initial params of ``_nnx_make_scanned()`` as a pure dict, built
  under ``_jit`` (eager ``nnx.vmap`` init compiles op by op) once."""
  return nnx.to_pure_dict(_jit(lambda: nnx.state(_nnx_make_scanned()))())


def _nnx_new_scanned():
  """A fresh scanned model (own Variables) holding the initial params."""
  graphdef, state = nnx.split(nnx.eval_shape(_nnx_make_scanned))
  nnx.replace_by_pure_dict(state, _nnx_scanned_values())
  return nnx.merge(graphdef, state)


def _nnx_pair(opt):
  """A scanned model and its twin holding the same weights (slice i of the
  stacked layers in block i); for ND-Adam both start normalized."""
  scanned = _nnx_new_scanned()
  assert scanned.layers.linear.kernel.shape == (L, D, D)
  # The twin's own init is never used: build it abstractly, then copy.
  twin = nnx.eval_shape(lambda: NNXUnrolled(nnx.Rngs(2)))
  nnx.update(twin.embed, nnx.state(scanned.embed, nnx.Param))
  nnx.update(twin.head, nnx.state(scanned.head, nnx.Param))
  stacked = nnx.state(scanned.layers, nnx.Param)
  for i in range(L):
    nnx.update(twin.blocks[i], _slice(stacked, i))
  if opt == "nd_adam":
    # normalize_vectors straight on the NNX state (Variables, `.value` keys).
    nnx.update(scanned, _normalize(nnx.state(scanned, nnx.Param), True))
    nnx.update(twin, _normalize(nnx.state(twin, nnx.Param), False))
  return scanned, twin


def _nnx_train(model, tx, steps=STEPS):
  """Trains through ``nnx.Optimizer``; the params after each step.

  The step is the functional ``nnx.split``/``nnx.merge`` form of the usual
  ``optimizer.update(model, grads)`` step, so that it can be ``_jit``-ed.
  """
  x, y = _batch()
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))

  @_jit
  def step(state):
    model, optimizer = nnx.merge(graphdef, state)
    grads = nnx.grad(lambda m: _xent(m(x), y))(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer))

  out = []
  for _ in range(steps):
    state = step(state)
    nnx.update((model, optimizer), state)
    out.append(_nnx_params(model))
  assert int(optimizer.step[...]) == steps
  return out


@functools.cache
def _nnx_twin_traj(opt):
  """The unrolled twin's trajectory, shared by the tests."""
  return _nnx_train(_nnx_pair(opt)[1], _tx(opt, False))


@pytest.mark.parametrize("opt", ["adam_ng", "nd_adam"])
def test_nnx_twin_is_the_same_function(opt):
  x, _ = _batch()
  scanned, twin = _nnx_pair(opt)
  if opt == "adam_ng":
    chex.assert_trees_all_equal(_nnx_params(scanned), _nnx_params(twin))
    out_s, out_u = _jit(lambda a, b: (a(x), b(x)))(scanned, twin)
    chex.assert_trees_all_close(out_s, out_u, rtol=RTOL, atol=ATOL)
    # The stacked params' paths name "layers" (and end in a Variable's
    # `.value`, which the "layer" rule skips): one block per slice.
    state = nnx.state(scanned, nnx.Param)
    parts = normopt.block_partition(state, "layer", stacked=SPEC)
    assert len(parts) == 2 + 2 * L  # embed, head; per slice: norm, linear
  else:
    chex.assert_trees_all_close(
        _nnx_params(scanned), _nnx_params(twin), rtol=RTOL, atol=ATOL
    )
    _record("nnx", "normalize_vectors", _max_dev(_nnx_params(scanned), _nnx_params(twin)))
    np.testing.assert_allclose(
        np.linalg.norm(_nnx_params(scanned)["blocks"][0]["linear"]["kernel"], axis=0),
        1.0, rtol=1e-5,
    )


@pytest.mark.parametrize("opt", ["adam_ng", "nd_adam"])
def test_nnx_matches_unrolled(opt):
  scanned, _ = _nnx_pair(opt)
  start = _nnx_params(scanned)
  traj_s = _nnx_train(scanned, _tx(opt, True))
  traj_u = _nnx_twin_traj(opt)
  _record("nnx", opt, _match(traj_s, traj_u, lambda p: p))
  assert _max_dev(start, traj_s[-1]) > 1e-2


def test_nnx_adam_ng_without_stacked_deviates():
  scanned, _ = _nnx_pair("adam_ng")
  traj_s = _nnx_train(scanned, _tx("adam_ng", False))
  dev = _max_dev(traj_s[-1], _nnx_twin_traj("adam_ng")[-1])
  _record("nnx", "adam_ng (no stacked)", dev)
  assert dev > NEG_MIN_DEV


# --- Equinox: eqx.filter_vmap + lax.scan ------------------------------------

class EqxScanned(eqx.Module):
  """Embedding, L ``filter_vmap``-ed Linear layers under ``layers``, head."""

  embed: eqx.nn.Linear
  layers: eqx.nn.Linear
  head: eqx.nn.Linear

  def __init__(self, key):
    k_embed, k_layers, k_head = jax.random.split(key, 3)
    self.embed = eqx.nn.Linear(D_IN, D, key=k_embed)
    make = eqx.filter_vmap(lambda k: eqx.nn.Linear(D, D, key=k))
    self.layers = make(jax.random.split(k_layers, L))
    self.head = eqx.nn.Linear(D, C, key=k_head)

  def __call__(self, x):
    x = self.embed(x)
    dynamic, static = eqx.partition(self.layers, eqx.is_array)

    def body(x, layer_and_scale):
      layer, s = layer_and_scale
      return x + s * jnp.tanh(eqx.combine(layer, static)(x)), None

    x, _ = jax.lax.scan(body, x, (dynamic, jnp.asarray(SCALES, jnp.float32)))
    return self.head(x)


class EqxUnrolled(eqx.Module):
  """The twin: a list of L Linear layers applied one by one."""

  embed: eqx.nn.Linear
  layers: list
  head: eqx.nn.Linear

  def __init__(self, scanned):
    self.embed = scanned.embed
    self.layers = [_slice(scanned.layers, i) for i in range(L)]
    self.head = scanned.head

  def __call__(self, x):
    x = self.embed(x)
    for layer, s in zip(self.layers, SCALES, strict=True):
      x = x + jnp.float32(s) * jnp.tanh(layer(x))
    return self.head(x)


def _eqx_train(model, tx, steps=STEPS):
  """Params after each step, as plain ``_eqx_plain`` dicts."""
  x, y = _batch()
  params, static = eqx.partition(model, eqx.is_array)

  def loss(p):
    return _xent(jax.vmap(eqx.combine(p, static))(x), y)

  return [_eqx_plain(p) for p in _train(loss, params, tx, steps)]


def _eqx_plain(params):
  """Equinox params, scanned or unrolled -> plain (weight, bias) tuples."""
  layers = params.layers
  if isinstance(layers, eqx.nn.Linear):
    layers = [_slice(layers, i) for i in range(L)]
  return {
      "embed": (params.embed.weight, params.embed.bias),
      "layers": [(layer.weight, layer.bias) for layer in layers],
      "head": (params.head.weight, params.head.bias),
  }


@pytest.fixture(scope="module")
def eqx_twins():
  """The scanned model, its twin's start and its twin's trajectory."""
  x, _ = _batch()
  scanned = _jit(EqxScanned)(jax.random.key(3))  # all fields arrays or static
  assert scanned.layers.weight.shape == (L, D, D)
  twin = EqxUnrolled(scanned)
  out_s, out_u = _jit(lambda a, b: (jax.vmap(a)(x), jax.vmap(b)(x)))(scanned, twin)
  chex.assert_trees_all_close(out_s, out_u, rtol=RTOL, atol=ATOL)
  start = _np(_eqx_plain(twin))
  return scanned, start, _eqx_train(twin, _tx("adam_ng", False))


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "no_stacked"])
def test_eqx_adam_ng_matches_unrolled(eqx_twins, stacked):
  scanned, start, traj_u = eqx_twins
  traj_s = _eqx_train(scanned, _tx("adam_ng", stacked))
  if stacked:
    _record("eqx", "adam_ng", _match(traj_s, traj_u, lambda p: p))
    for i in range(L):
      assert _max_dev(start["layers"][i], traj_u[-1]["layers"][i]) > 1e-2
  else:
    dev = _max_dev(traj_s[-1], traj_u[-1])
    _record("eqx", "adam_ng (no stacked)", dev)
    assert dev > NEG_MIN_DEV

"""Stacked (scanned) layers: every registry method on a stacked tree equals
the same method on its unrolled twin, slice by slice.

Run as a script (``python tests/stacked_checks.py``): it starts JAX with 4
virtual CPU devices and prints ONE JSON object on the last line of stdout,
``path -> case -> {"max_dev": float}`` (``tests/test_stacked.py`` runs it in
a subprocess and asserts on it). A case is a registry method and, for the
methods that take ``blocks=``, one block mode: all five for a transformation,
two (:data:`FEW_MODES`) for a norm variant and for an alias (issue 30), whose
block cutting is that of the primitives it chains, checked in all five. Each path runs programs
holding up to ``CHUNK`` cases: init, then ``STEPS`` updates in a
``lax.scan``.

Paths, each compared with the unrolled twin run on one device (the sharded
ones leave out the thin Euclidean aliases, :data:`JIT_ONLY`):

* ``jit``: one device, plain ``jax.jit``.
* ``auto``: stacked leaves sharded along their stack axis over 4 devices
  (FSDP-style), ``NamedSharding`` on an Auto mesh.
* ``explicit``: the same on an Explicit mesh (sharding in types).
* ``shard_map``: whole layers per device: the stacked subtree split along
  the stack axis over 2 devices (2 layers each) inside ``shard_map``. No
  ``axis_name`` is passed (per-slice norms are device-local), except for
  ``"global"`` blocks, whose one norm spans every layer and so every device.

Gradients differ by orders of magnitude between layers and one layer's
gradient is all zero.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # N_DEV devices
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  )
  os.environ["JAX_PLATFORMS"] = "cpu"

import functools
import inspect
import json
import time
import traceback

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distributed_checks import max_dev  # noqa: E402
from methods_registry import METHODS  # noqa: E402
import normopt  # noqa: E402

N_DEV = 4  # virtual CPU devices (the flag above)
L = 4  # stacked layers
STEPS = 5
AXIS = "x"
# Per layer: the scale of its gradient (layer 3 is all zero).
LAYER_SCALES = (1e-3, 1.0, 1e3, 0.0)
STACK_KEY = "layers"
# Few leaves: XLA compile time, which dominates, grows with them.
STACKED_SHAPES = {
    "attn": {"kernel": (8, 8), "bias": (8,)},
    "mlp": {"kernel": (8, 16)},
    "conv": {"kernel": (3, 3, 2, 4)},
}
OTHER_SHAPES = {"head": {"kernel": (8, 3), "bias": (3,)}}
MAP_DEVICES = 2  # shard_map: 2 whole layers per device
MODES = ("leaf", "layer", "global", "unit", "callable")
# Two modes with different slice logic (slices of several leaves; vectors
# within a slice) for the methods whose block cutting is another's.
FEW_MODES = ("layer", "unit")
SPEC = normopt.stacked_under(STACK_KEY)
# Cases per compiled program: XLA's compile time grows faster than the
# program (all 106 cases at once took 62 s to compile, two halves 39 s).
CHUNK = 16


def _module(path):
  """The module name a leaf belongs to (the key above its parameter name)."""
  return str(normopt.blocks.layer_key(path)[-1].key)


def user_key(path, leaf):
  """Callable blocks on the stacked tree: attn and mlp form one block."""
  del leaf
  return "block" if _module(path) in ("attn", "mlp") else _module(path)


def unrolled_user_key(path, leaf):
  """The same blocks on the unrolled tree: ``(user key, layer index)``."""
  name = str(path[0].key)
  layer = int(name.split("_")[1]) if name.startswith(STACK_KEY + "_") else None
  return (user_key(path, leaf), layer)


def _shapes(stacked):
  lead = (L,) if stacked else ()
  return {
      STACK_KEY: jax.tree.map(
          lambda s: lead + s, STACKED_SHAPES, is_leaf=lambda s: isinstance(s, tuple)
      ),
      **OTHER_SHAPES,
  }


def make_tree(rng, scales=None):
  """A stacked tree: normal entries, layer ``i`` scaled by ``scales[i]``."""
  def leaf(s, stacked):
    x = rng.standard_normal(s).astype(np.float32)
    if stacked and scales is not None:
      x = x * np.asarray(scales, np.float32).reshape((L,) + (1,) * (len(s) - 1))
    return x

  tree = {}
  for k, sub in _shapes(True).items():
    tree[k] = jax.tree.map(
        lambda s, k=k: leaf(s, k == STACK_KEY), sub,
        is_leaf=lambda s: isinstance(s, tuple),
    )
  return tree


def unroll(tree):
  """Stacked tree -> unrolled twin: ``layers`` becomes ``layers_0..L-1``."""
  out = {k: v for k, v in tree.items() if k != STACK_KEY}
  for i in range(L):
    out[f"{STACK_KEY}_{i}"] = jax.tree.map(lambda x, i=i: x[i], tree[STACK_KEY])
  return out


def restack(tree):
  """Unrolled tree -> stacked layout (to compare with a stacked run)."""
  out = {k: v for k, v in tree.items() if not k.startswith(STACK_KEY + "_")}
  layers = [tree[f"{STACK_KEY}_{i}"] for i in range(L)]
  out[STACK_KEY] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return out


def _takes(make, name):
  try:
    return name in inspect.signature(make).parameters
  except (TypeError, ValueError):
    return False


def block_modes(method):
  """The block modes ``method`` is checked in (``(None,)``: no ``blocks=``).

  All of :data:`MODES` for a transformation. :data:`FEW_MODES` for a norm
  variant (``block_normalize:rms``, ``:sign``: the block cutting is the plain
  method's) and for an alias (a method taking ``learning_rate``: a thin chain
  of primitives, ``block_normalize``, ``ngadap_scale``,
  ``scale_by_adagrad_bng``, ``scale_by_adanorm_moments``, each checked in
  every mode); the two modes keep the check of the norm and of the chain.
  """
  if not _takes(method.make, "blocks"):
    return (None,)
  if ":" in method.name or _takes(method.make, "learning_rate"):
    return FEW_MODES
  return MODES


#: Aliases that chain the Euclidean block primitives with optax's moments and
#: the elementwise decay: their stacked cutting is checked on every path, their
#: sharding only where it adds something, so the sharded paths (``auto``,
#: ``explicit``, ``shard_map``) leave them to ``jit`` (issue 30). Their
#: primitives, the norm variants, SNGD's global norm and the Muon/Scion aliases
#: (layouts, spectral matrices) run on every path.
JIT_ONLY = frozenset({
    "sgd_ng", "adam_ng", "adagrad_ng", "sgd_ngadap", "adam_ngadap", "adagrad_bng",
    "adam_norm", "diffgrad", "diffgrad_norm", "radam_norm", "adabelief_norm",
})


def sharded_cases(cases):
  """The cases the sharded paths run: all but :data:`JIT_ONLY`'s."""
  return {n: c for n, c in cases.items() if n.split("[")[0] not in JIT_ONLY}


def make_cases():
  """``{case: (stacked tx, unrolled tx, global?, shard_map tx, sphere?)}``."""
  cases = {}
  for m in METHODS:
    for mode in block_modes(m):
      kw = dict(m.kwargs)
      kw_unrolled = dict(m.kwargs)
      if mode is not None:
        kw["blocks"] = user_key if mode == "callable" else mode
        kw_unrolled["blocks"] = unrolled_user_key if mode == "callable" else mode
      is_global = mode == "global" or m.name in ("sngd", "s_sngd")
      stacked_kw = dict(kw, stacked=SPEC) if _takes(m.make, "stacked") else kw
      map_kw = dict(stacked_kw, axis_name=AXIS) if is_global else stacked_kw
      name = m.name if mode is None else f"{m.name}[{mode}]"
      cases[name] = dict(
          stacked=m.make(**stacked_kw),
          unrolled=m.make(**kw_unrolled),
          shard_map=m.make(**map_kw),
          sphere=m.params_kind == "sphere",
          global_=is_global,
      )
  # Negative controls: without stacked=, a stacked leaf is one block (one
  # vector spans layers for nd_adam); the test asserts these deviate.
  for name, tx in (("block_normalize", normopt.block_normalize("layer")),
                   ("nd_adam", normopt.nd_adam())):
    cases[f"{name}[no stacked: must deviate]"] = dict(
        stacked=tx, unrolled=tx, shard_map=tx, sphere=name == "nd_adam", global_=False)
  return cases


def _params(case, stacked_tree):
  if case["sphere"]:
    return normopt.normalize_vectors(stacked_tree, stacked=SPEC)
  return stacked_tree


def _train(txs, params, grads_seq):
  """init, then STEPS updates in a scan, of every case; (params, updates)."""
  states = {n: tx.init(params[n]) for n, tx in txs.items()}
  updates = jax.tree.map(jnp.zeros_like, params)

  def body(carry, g):
    p, s, _ = carry
    new_p, new_s, new_u = {}, {}, {}
    for n, tx in txs.items():
      new_u[n], new_s[n] = tx.update(g[n] if n in g else g["_"], s[n], p[n])
      new_p[n] = optax.apply_updates(p[n], new_u[n])
    return (new_p, new_s, new_u), None

  (p, _, u), _ = jax.lax.scan(body, (params, states, updates), grads_seq)
  return p, u


def _compare(out, ref, names):
  p, u = out
  rp, ru = ref
  return {
      n: dict(max_dev=max(max_dev(p[n], restack(rp[n])), max_dev(u[n], restack(ru[n]))))
      for n in names
  }


def _grads_seq(rng):
  """STEPS stacked gradient trees, stacked on a leading step axis."""
  steps = [make_tree(rng, LAYER_SCALES) for _ in range(STEPS)]
  return jax.tree.map(lambda *xs: np.stack(xs), *steps)


def run_unrolled(cases, params0, grads):
  txs = {n: c["unrolled"] for n, c in cases.items()}
  params = {n: unroll(_params(c, params0)) for n, c in cases.items()}
  return jax.jit(functools.partial(_train, txs))(params, {"_": _unroll_seq(grads)})


def _unroll_seq(grads):
  """Unrolls a step-stacked gradient tree (stack axis is axis 1)."""
  out = {k: v for k, v in grads.items() if k != STACK_KEY}
  for i in range(L):
    out[f"{STACK_KEY}_{i}"] = jax.tree.map(lambda x, i=i: x[:, i], grads[STACK_KEY])
  return out


def run_jit(cases, params0, grads):
  txs = {n: c["stacked"] for n, c in cases.items()}
  params = {n: _params(c, params0) for n, c in cases.items()}
  return jax.jit(functools.partial(_train, txs))(params, {"_": grads})


def _fsdp_specs(tree, lead=()):
  """The stack axis split over devices; other leaves replicated."""
  return {
      k: jax.tree.map(lambda _, k=k: P(*lead, AXIS) if k == STACK_KEY else P(), v)
      for k, v in tree.items()
  }


def run_sharded(cases, params0, grads, mesh):
  txs = {n: c["stacked"] for n, c in cases.items()}
  params = {n: _params(c, params0) for n, c in cases.items()}
  specs = _fsdp_specs(params0)
  p_sh = {n: jax.tree.map(lambda s: NamedSharding(mesh, s), specs) for n in cases}
  g_sh = jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s)), _fsdp_specs(params0))
  params = jax.device_put(params, p_sh)
  grads = jax.device_put(grads, g_sh)
  return jax.jit(functools.partial(_train, txs))(params, {"_": grads})


def run_shard_map(cases, params0, grads, mesh):
  """Only the stacked subtree, split along the stack axis: whole layers per
  device."""
  txs = {n: c["shard_map"] for n, c in cases.items()}
  params = {n: {STACK_KEY: _params(c, params0)[STACK_KEY]} for n, c in cases.items()}
  g = {STACK_KEY: grads[STACK_KEY]}
  p_specs = {n: {STACK_KEY: jax.tree.map(lambda _: P(AXIS), params0[STACK_KEY])} for n in cases}
  g_specs = {"_": {STACK_KEY: jax.tree.map(lambda _: P(None, AXIS), params0[STACK_KEY])}}
  run = jax.jit(jax.shard_map(
      functools.partial(_train, txs), mesh=mesh,
      in_specs=(p_specs, g_specs), out_specs=(p_specs, p_specs), check_vma=False))
  return run(params, {"_": g})


def _shard_map_reference(cases, params0, grads, ref):
  """The unrolled twin of the stacked subtree alone (no head): the full
  run's layers for per-layer blocks; a run of its own for global blocks,
  whose one norm would include the head."""
  glob = {n: c for n, c in cases.items() if c["global_"]}
  p0 = {STACK_KEY: params0[STACK_KEY]}
  g = {STACK_KEY: grads[STACK_KEY]}
  txs = {n: c["unrolled"] for n, c in glob.items()}
  params = {n: unroll(_params(c, p0)) for n, c in glob.items()}
  own = jax.jit(functools.partial(_train, txs))(params, {"_": _unroll_seq(g)}) if glob else ({}, {})
  layers = lambda t: {k: v for k, v in t.items() if k.startswith(STACK_KEY + "_")}
  return tuple(
      {n: o[n] if n in glob else layers(r[n]) for n in cases} for o, r in zip(own, ref, strict=True)
  )


def chunks(cases):
  """``cases`` cut into dicts of at most :data:`CHUNK` cases, in order."""
  names = list(cases)
  return [{n: cases[n] for n in names[i:i + CHUNK]} for i in range(0, len(names), CHUNK)]


def _run(results, path, fn, cases):
  t0 = time.perf_counter()
  results[path] = {}
  for chunk in chunks(cases):
    try:
      results[path].update(fn(chunk))
    except Exception:  # find which case fails; the pytest side reports it.
      for n in chunk:
        try:
          results[path].update(fn({n: chunk[n]}))
        except Exception as e:
          results[path][n] = dict(
              error=f"{type(e).__name__}: {e}"[:2000], trace=traceback.format_exc()[-3000:])
  results["seconds"][path] = time.perf_counter() - t0


def main(only=None):
  assert jax.device_count() == N_DEV, jax.devices()
  rng = np.random.default_rng(0)
  params0 = make_tree(rng)
  grads = _grads_seq(rng)
  cases = make_cases()
  if only:
    cases = {n: c for n, c in cases.items() if n.split("[")[0] in only}
  results = {"seconds": {}, "cases": sorted(cases)}
  t0 = time.perf_counter()
  ref = ({}, {})
  for chunk in chunks(cases):
    for whole, part in zip(ref, run_unrolled(chunk, params0, grads), strict=True):
      whole.update(part)
  results["seconds"]["unrolled"] = time.perf_counter() - t0
  sub = lambda c: tuple({n: r[n] for n in c} for r in ref)
  auto = jax.make_mesh((N_DEV,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  two = jax.make_mesh(
      (MAP_DEVICES,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
      devices=jax.devices()[:MAP_DEVICES])
  explicit = jax.make_mesh((N_DEV,), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))

  def explicit_run(c):
    with jax.set_mesh(explicit):
      return _compare(run_sharded(c, params0, grads, explicit), sub(c), c)

  def shard_map_run(c):
    ref_c = _shard_map_reference(c, params0, grads, sub(c))
    return _compare(run_shard_map(c, params0, grads, two), ref_c, c)

  sharded = sharded_cases(cases)
  _run(results, "jit", lambda c: _compare(run_jit(c, params0, grads), sub(c), c), cases)
  _run(results, "auto", lambda c: _compare(run_sharded(c, params0, grads, auto), sub(c), c),
       sharded)
  _run(results, "explicit", explicit_run, sharded)
  _run(results, "shard_map", shard_map_run, sharded)
  results["sharded_cases"] = sorted(sharded)
  return results


if __name__ == "__main__":
  only = sys.argv[1].split(",") if len(sys.argv) > 1 else None
  print(json.dumps(main(only)))

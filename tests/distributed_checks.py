"""Multi-device checks of every registry method on 8 virtual CPU devices.

Run as a script (``python tests/distributed_checks.py``): it sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, runs
every check and prints ONE JSON object on the last line of stdout, mapping
``path -> case -> {"max_dev": float, ...}``. ``tests/test_distributed.py``
runs it in a subprocess (so the rest of the test session keeps its own device
count) and asserts on the numbers. One JAX start serves all checks.

Paths (each compared with the same optimizer run on one device, unsharded;
every path is ONE program holding all cases: init, then ``STEPS`` updates in a
``lax.scan``, because XLA compilation dominates the run time):

* ``sharded_jit``: params/grads placed with ``NamedSharding`` (one kernel
  split over its last axis, one over axis 0); plain ``jax.jit``. Also checks
  that updates, new params and param-shaped state keep the input sharding,
  and that ``init`` traces from ``jax.ShapeDtypeStruct``s with shardings.
* ``explicit``: ``AxisType.Explicit`` mesh axes (sharding in types): the
  state types of ``init`` and of an update agree (abstract evaluation only).
* ``shard_map``: the optimizer runs on local shards; with ``axis_name=`` all
  leaves are split along reduced axes (every ``blocks`` mode), without it
  kernels are split along their last (unit) axis.
* ``pmap``: data parallel, per-device gradients are ``pmean``-ed, then
  updated; compared with one device on the mean gradient.

``--multiprocess ID N PORT OUT``: one of N processes joined by
``jax.distributed`` on 127.0.0.1 (see :func:`multiprocess_worker`).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
  _N = 2 if "--multiprocess" in sys.argv else 8
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={_N}"
  )
  os.environ["JAX_PLATFORMS"] = "cpu"

import functools
import json
import time
import traceback
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import normopt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from methods_registry import METHODS  # noqa: E402

N_DEV = 8
STEPS = 3
AXIS = "x"

# Every shape is unique, so a state leaf can be matched to its parameter by
# shape; every sharded dimension is a multiple of 8. Few leaves: XLA compile
# time, which dominates, grows with them.
SHAPES = {
    "conv": {"kernel": (2, 2, 8, 8)},
    "dense": {"kernel": (24, 16), "bias": (16,)},
}
# sharded jit: the conv kernel over its last axis, the dense kernel over axis 0.
JIT_SPECS = {
    "conv": {"kernel": P(None, None, None, AXIS)},
    "dense": {"kernel": P(AXIS, None), "bias": P(AXIS)},
}
# shard_map with axis_name: every leaf split along a reduced ("unit") axis.
REDUCED_SPECS = {
    "conv": {"kernel": P(None, None, AXIS, None)},
    "dense": {"kernel": P(AXIS, None), "bias": P(AXIS)},
}
# shard_map without axis_name: whole units per shard, 1-D leaves replicated.
UNIT_SPECS = {
    "conv": {"kernel": P(None, None, None, AXIS)},
    "dense": {"kernel": P(None, AXIS), "bias": P()},
}
# shard_map without axis_name for element-wise / per-unit methods.
ELEMENTWISE_SPECS = {
    "conv": {"kernel": P(None, None, None, AXIS)},
    "dense": {"kernel": P(None, AXIS), "bias": P(AXIS)},
}

# shard_map without axis_name for the spectral norm: a matrix split across the
# mapped axis cannot be orthogonalized per shard (with axis_name it raises),
# so each shard holds whole leaves (data parallelism, gradients replicated).
REPLICATED_SPECS = {"conv": {"kernel": P()}, "dense": {"kernel": P(), "bias": P()}}
# Scion's LMOs (spectral, and the per-row/column/vector RMS ones) take no
# axis_name either: whole leaves per shard.
WHOLE_MATRICES = ("block_normalize:spectral", "muon", "scale_by_scion", "scion", "scion:scg",
                  "scale_by_unit_rms", "normuon", "adamuon")


def _is_spec(x):
  return isinstance(x, P)


def make_params(rng, kind="any"):
  params = jax.tree.map(
      lambda s: rng.standard_normal(s).astype(np.float32),
      SHAPES,
      is_leaf=lambda s: isinstance(s, tuple),
  )
  if kind == "sphere" and hasattr(normopt, "normalize_vectors"):
    params = jax.tree.map(np.asarray, normopt.normalize_vectors(params))
  return params


def make_grads(rng):
  """Per step and per device gradients, and their float32 mean over devices."""
  per_dev = jax.tree.map(
      lambda s: rng.standard_normal((STEPS, N_DEV) + s).astype(np.float32),
      SHAPES,
      is_leaf=lambda s: isinstance(s, tuple),
  )
  mean = jax.tree.map(lambda g: g.mean(axis=1, dtype=np.float64).astype(np.float32), per_dev)
  return per_dev, mean


class Case(NamedTuple):
  """One optimizer to check: ``tx`` for the unsharded/jit/pmap runs, and
  ``tx_map`` with ``specs`` for ``shard_map``."""

  tx: optax.GradientTransformation
  params: Any
  tx_map: optax.GradientTransformation
  specs: Any
  registry: bool = True


def max_dev(a, b):
  """Max |a - b| over a pytree, relative to max(1, |b|) per leaf."""
  devs = [
      float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
            / max(1.0, float(np.max(np.abs(np.asarray(y, np.float64))))))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
      if np.size(y)
  ]
  return max(devs, default=0.0)


def _at(tree, t):
  return jax.tree.map(lambda g: g[t], tree)


def _step_all(txs, params, states, grads):
  """One update of every case; ``grads`` is one tree or one per case."""
  out_p, out_s, out_u = {}, {}, {}
  for name, tx in txs.items():
    g = grads[name] if isinstance(grads, dict) and name in grads else grads
    u, out_s[name] = tx.update(g, states[name], params[name])
    out_p[name] = optax.apply_updates(params[name], u)
    out_u[name] = u
  return out_p, out_s, out_u


def _init_all(txs, params):
  return {name: tx.init(params[name]) for name, tx in txs.items()}


def _train_all(txs, params, grads_seq, reduce_grads=lambda g: g):
  """init, then ``STEPS`` updates in a ``lax.scan``: ONE program per path.

  Returns (params, state, last updates), a dict per case."""
  states = _init_all(txs, params)
  updates = jax.tree.map(jnp.zeros_like, params)

  def body(carry, g):
    p, s, _ = carry
    return _step_all(txs, p, s, reduce_grads(g)), None

  return jax.lax.scan(body, (params, states, updates), grads_seq)[0]


def _compare(out, ref, names):
  """Per case: max deviation over params, state and last updates."""
  p, s, u = out
  rp, rs, ru = ref
  return {
      n: dict(max_dev=max(max_dev(p[n], rp[n]), max_dev(s[n], rs[n]), max_dev(u[n], ru[n])))
      for n in names
  }


def run_reference(cases, grads_mean):
  """One device, unsharded: ``STEPS`` updates of every case on the mean gradient."""
  dev = jax.devices()[0]
  txs = {n: c.tx for n, c in cases.items()}
  params = jax.device_put({n: c.params for n, c in cases.items()}, dev)
  return jax.jit(functools.partial(_train_all, txs))(params, jax.device_put(grads_mean, dev))


def check_sharded_jit(cases, grads_mean, ref, mesh):
  """Plain ``jax.jit`` on ``NamedSharding``-placed params and gradients."""
  txs = {n: c.tx for n, c in cases.items()}
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), JIT_SPECS, is_leaf=_is_spec)
  seq_shardings = jax.tree.map(
      lambda s: NamedSharding(mesh, P(None, *s)), JIT_SPECS, is_leaf=_is_spec)
  all_sh = {n: shardings for n in cases}
  params = {n: c.params for n, c in cases.items()}
  by_shape = {
      tuple(np.shape(x)): sh
      for x, sh in zip(jax.tree.leaves(params), jax.tree.leaves(all_sh), strict=True)
  }
  # init from abstract, sharded inputs: traced and lowered, not compiled.
  sds = jax.tree.map(
      lambda x, sh: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh), params, all_sh
  )
  abstract_state = jax.eval_shape(functools.partial(_init_all, txs), sds)
  jax.jit(functools.partial(_init_all, txs)).lower(sds)
  p, s, u = jax.jit(functools.partial(_train_all, txs))(
      jax.device_put(params, all_sh), jax.device_put(grads_mean, seq_shardings))
  res = _compare((p, s, u), ref, cases)
  for n in cases:
    kept = all(
        x.sharding.is_equivalent_to(sh, x.ndim)
        for x, sh in zip(jax.tree.leaves((p[n], u[n])),
                         jax.tree.leaves((shardings, shardings)), strict=True)
    )
    state_kept = all(
        len(x.sharding.device_set) == N_DEV
        and (tuple(x.shape) not in by_shape
             or x.sharding.is_equivalent_to(by_shape[tuple(x.shape)], x.ndim))
        for x in jax.tree.leaves(s[n])
    )
    init_ok = jax.tree.structure(abstract_state[n]) == jax.tree.structure(s[n]) and all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree.leaves(abstract_state[n]), jax.tree.leaves(s[n]), strict=True)
    )
    res[n].update(sharding_kept=bool(kept), state_sharding_kept=bool(state_kept),
                  init_from_sds=bool(init_ok))
  return res


def check_explicit(cases):
  """Sharding in types (``AxisType.Explicit``): ``init`` and an update give
  the same state types, and updates have the params' types."""
  txs = {n: c.tx for n, c in cases.items()}
  mesh = jax.make_mesh((N_DEV,), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))

  def init_and_step(p):
    s0 = _init_all(txs, p)
    _, s1, u = _step_all(txs, p, s0, p)
    return s0, s1, u, p

  def typ(x):  # what jax.typeof shows: shape, dtype, weak type, sharding
    spec = x.sharding.spec if x.sharding else P()  # eval_shape: constants have none
    return (x.shape, x.dtype, x.weak_type, tuple(spec) + (None,) * (x.ndim - len(spec)))

  res = {}
  with jax.set_mesh(mesh):
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), JIT_SPECS, is_leaf=_is_spec)
    sds = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh),
        {n: c.params for n, c in cases.items()}, {n: shardings for n in cases})
    t0, t1, tu, tp = jax.eval_shape(init_and_step, sds)
  t0, t1, tu, tp = jax.tree.map(typ, (t0, t1, tu, tp))
  for n in cases:
    a, b = jax.tree.leaves(t0[n]), jax.tree.leaves(t1[n])
    res[n] = dict(
        max_dev=0.0,
        state_types_match=len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True)),
        update_types_match=all(
            x == y for x, y in zip(jax.tree.leaves(tu[n]), jax.tree.leaves(tp[n]), strict=True)),
    )
  return res


def check_pmap(cases, grads_per_dev, ref):
  """Data parallel: ``pmean`` the per-device gradients, then update."""
  txs = {n: c.tx for n, c in cases.items()}
  train = functools.partial(
      _train_all, txs, reduce_grads=lambda g: jax.lax.pmean(g, "batch"))
  params = {n: c.params for n, c in cases.items()}
  # params replicated (in_axes None), gradients split on their device axis 1.
  p, s, u = jax.pmap(train, axis_name="batch", in_axes=(None, 1))(params, grads_per_dev)
  res = _compare((_at(p, 0), _at(s, 0), _at(u, 0)), ref, cases)
  for n in cases:
    res[n]["device_spread"] = max(max_dev(_at(p[n], 0), _at(p[n], i)) for i in range(1, N_DEV))
  return res


def _state_specs(state, params, specs):
  """Spec of a state leaf: its parameter's spec if it is param-shaped, that
  spec with reduced (size-1) axes unsplit if it is per-unit, else replicated."""
  pairs = [
      (tuple(np.shape(x)), tuple(sp) + (None,) * (np.ndim(x) - len(sp)))
      for x, sp in zip(jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=_is_spec),
                       strict=True)
  ]

  def spec(x):
    shape = tuple(x.shape)
    for pshape, sp in pairs:
      if shape == pshape:
        return P(*sp)
    for pshape, sp in pairs:
      if len(shape) == len(pshape) and all(a in (b, 1) for a, b in zip(shape, pshape, strict=True)):
        return P(*(None if a == 1 else d for a, d in zip(shape, sp, strict=False)))
    return P()

  return jax.tree.map(spec, state)


def _varying(x):
  """Mapped axes ``x`` varies over (``.vma`` in older JAX)."""
  t = jax.typeof(x)
  mat = getattr(t, "manual_axis_type", None)
  return mat.varying if mat is not None else t.vma


def check_shard_map(cases, grads_mean, ref, mesh):
  """Every case runs on its local shards inside one ``shard_map``."""
  txs = {n: c.tx_map for n, c in cases.items()}
  specs = {n: c.specs for n, c in cases.items()}
  params = {n: c.params for n, c in cases.items()}
  full_state = jax.eval_shape(
      functools.partial(_init_all, {n: c.tx for n, c in cases.items()}), params)
  state_specs = {n: _state_specs(full_state[n], params[n], specs[n]) for n in cases}
  seq_specs = jax.tree.map(lambda sp: P(None, *sp), specs, is_leaf=_is_spec)

  def vary(sp, x):
    # A state leaf built as fresh zeros (not from the params) is invariant
    # across the mapped axis; the scan carry needs it varying like its update.
    if any(d is not None for d in sp) and AXIS not in _varying(x):
      return jax.lax.pcast(x, (AXIS,), to="varying")
    return x

  def train(params, grads_seq):
    states = jax.tree.map(vary, state_specs, _init_all(txs, params), is_leaf=_is_spec)
    updates = jax.tree.map(jnp.zeros_like, params)

    def body(carry, g):
      p, s, _ = carry
      return _step_all(txs, p, s, g), None

    return jax.lax.scan(body, (params, states, updates), grads_seq)[0]

  run = jax.jit(jax.shard_map(
      train, mesh=mesh, in_specs=(specs, seq_specs), out_specs=(specs, state_specs, specs)))
  out = run(params, {n: grads_mean for n in cases})
  return _compare(out, ref, cases)


def _with_axis_name(make, kwargs):
  """``make(**kwargs, axis_name=AXIS)``, or None if it takes no axis_name."""
  try:
    return make(**kwargs, axis_name=AXIS)
  except TypeError:
    return None


BLOCK_MODES = ("leaf", "layer", "global", "unit", lambda path, leaf: len(leaf.shape) >= 2)
BLOCKWISE = {
    "block_normalize": lambda b, **kw: normopt.block_normalize(b, **kw),
    "ngadap_scale": lambda b, **kw: normopt.ngadap_scale(0.02, b, **kw),
}
if hasattr(normopt, "adanorm_rescale"):
  BLOCKWISE["adanorm_rescale"] = lambda b, **kw: normopt.adanorm_rescale(blocks=b, **kw)


def make_cases(only=None):
  cases = {}
  for m in METHODS:
    if only is not None and m.name not in only:
      continue
    params = make_params(np.random.default_rng(1), m.params_kind)
    tx = m.make(**m.kwargs)
    tx_ax = _with_axis_name(m.make, m.kwargs)
    if tx_ax is not None:
      cases[m.name] = Case(tx, params, tx_ax, REDUCED_SPECS)
    elif m.name in WHOLE_MATRICES:  # each shard holds whole matrices
      cases[m.name] = Case(tx, params, tx, REPLICATED_SPECS)
    else:  # element-wise or per-unit: whole units per shard.
      cases[m.name] = Case(tx, params, tx, ELEMENTWISE_SPECS)
  if only is None:
    params = make_params(np.random.default_rng(1))
    for tname, make in BLOCKWISE.items():
      for b in BLOCK_MODES:
        bname = b if isinstance(b, str) else "callable"
        cases[f"{tname}[{bname}]"] = Case(
            make(b), params, make(b, axis_name=AXIS), REDUCED_SPECS, False)
      # Negative control: split leaves WITHOUT axis_name give shard-local
      # norms; the test asserts this case deviates (the check has teeth).
      if tname == "block_normalize":
        cases[f"{tname}[layer, no axis_name: must deviate]"] = Case(
            make("layer"), params, make("layer"), REDUCED_SPECS, False)
      # "unit" split along the output axis keeps whole units: no axis_name.
      cases[f"{tname}[unit, output split, no axis_name]"] = Case(
          make("unit"), params, make("unit"), UNIT_SPECS, False)
  return cases


def _run(results, path, fn, cases, *args):
  """Runs ``fn`` on all cases at once (one compile); on an error, one by one."""
  t0, c0 = time.perf_counter(), time.process_time()
  if os.environ.get("NORMOPT_SKIP_PATHS") and path in os.environ["NORMOPT_SKIP_PATHS"].split(","):
    return
  try:
    results[path] = fn(cases, *args)
  except Exception:  # find which case fails; the pytest side reports it.
    results[path] = {}
    for n in cases:
      try:
        results[path].update(fn({n: cases[n]}, *args))
      except Exception as e:
        results[path][n] = dict(
            error=f"{type(e).__name__}: {e}"[:2000], trace=traceback.format_exc()[-3000:])
  results["seconds"][path] = time.perf_counter() - t0
  results.setdefault("cpu_seconds", {})[path] = time.process_time() - c0


def main(only=None):
  assert jax.device_count() == N_DEV, jax.devices()
  mesh = Mesh(np.array(jax.devices()), (AXIS,))
  results = {"seconds": {}}
  grads_per_dev, grads_mean = make_grads(np.random.default_rng(0))
  cases = make_cases(only)
  registry = {n: c for n, c in cases.items() if c.registry}
  t0 = time.perf_counter()
  ref = run_reference(cases, grads_mean)
  results["seconds"]["reference"] = time.perf_counter() - t0
  sub = lambda names: jax.tree.map(lambda x: x, tuple({n: r[n] for n in names} for r in ref))
  _run(results, "sharded_jit", lambda c: check_sharded_jit(c, grads_mean, sub(c), mesh), registry)
  _run(results, "explicit", check_explicit, registry)
  _run(results, "pmap", lambda c: check_pmap(c, grads_per_dev, sub(c)), registry)
  _run(results, "shard_map", lambda c: check_shard_map(c, grads_mean, sub(c), mesh), cases)
  results["methods"] = sorted(registry)
  return results


MP_METHODS = ("adam_ng", "nd_adam")
MP_LOCAL_DEVICES = 2


def multiprocess_worker(process_id, num_processes, port, out_path):
  """One of ``num_processes`` processes (``MP_LOCAL_DEVICES`` CPU devices
  each) joined by ``jax.distributed`` on 127.0.0.1: ``STEPS`` sharded updates
  of ``MP_METHODS`` on a mesh over all processes' devices. Process 0 writes
  the gathered params and last updates (float lists) as JSON."""
  from jax.experimental import multihost_utils

  jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{port}",
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=60,
  )
  n = jax.device_count()
  assert n == num_processes * MP_LOCAL_DEVICES, jax.devices()
  mesh = Mesh(np.array(jax.devices()), (AXIS,))
  # kernels split over the last axis (sizes are multiples of the 4 devices).
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), JIT_SPECS, is_leaf=_is_spec)

  def global_array(x, sh):
    return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

  _, grads_mean = make_grads(np.random.default_rng(0))
  out = {"devices": n, "processes": jax.process_count()}
  for m in METHODS:
    if m.name not in MP_METHODS:
      continue
    tx = m.make(**m.kwargs)
    params = make_params(np.random.default_rng(1), m.params_kind)
    p = jax.tree.map(global_array, params, shardings)
    s = jax.jit(tx.init)(p)
    step = jax.jit(lambda p, s, g, tx=tx: _step_all({"m": tx}, {"m": p}, {"m": s}, g))
    for t in range(STEPS):
      g = jax.tree.map(global_array, _at(grads_mean, t), shardings)
      p, s, u = (x["m"] for x in step(p, s, g))
    p_all, u_all = multihost_utils.process_allgather((p, u), tiled=True)
    out[m.name] = jax.tree.map(
        lambda x: np.asarray(x).tolist(), {"params": p_all, "updates": u_all})
  if process_id == 0:
    with open(out_path, "w") as f:
      json.dump(out, f)
  jax.distributed.shutdown()


def single_process_reference(name):
  """``MP_METHODS`` on one device, unsharded (the multi-process baseline)."""
  m = next(m for m in METHODS if m.name == name)
  tx = m.make(**m.kwargs)
  params = make_params(np.random.default_rng(1), m.params_kind)
  _, grads_mean = make_grads(np.random.default_rng(0))
  p, _, u = run_reference({"m": Case(tx, params, tx, None)}, grads_mean)
  return {"params": p["m"], "updates": u["m"]}


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--multiprocess":
    pid, nproc, port, out_path = sys.argv[2:6]
    multiprocess_worker(int(pid), int(nproc), int(port), out_path)
  else:
    only = sys.argv[1].split(",") if len(sys.argv) > 1 else None
    print(json.dumps(main(only)))

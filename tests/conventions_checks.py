"""State types under sharding in types, for every registry method.

Run as a script: starts JAX with 4 virtual CPU devices on an Explicit mesh
and prints ONE JSON object on its last line, ``method -> case -> problem``
(an empty dict per method when all is well). ``tests/test_conventions.py``
runs it in a subprocess.

Per method, dtype (float16, bfloat16, float32) and layout (every leaf split
along its first axis, along its last axis, replicated, and a stacked tree
with its stack axis split, FSDP-style), the ``jax.typeof`` of every state
leaf must be the same from eager ``init``, from ``jax.jit(init)`` and after
an update (shape, dtype, weak type and sharding); updates must have their
parameters' types. That is inside ``jax.set_mesh`` of an Explicit mesh; in
float32, the same holds outside ``jax.set_mesh`` and on an Auto mesh (inside
and outside); for the stacked layout ``jax.jit(init)`` is also run wherever
``optax.adam(...).init`` runs under ``jit`` (not outside ``set_mesh`` on an
Explicit mesh: there a jitted function that reads no input value has no
devices).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # N_DEV devices
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  )
  os.environ["JAX_PLATFORMS"] = "cpu"

import contextlib
import inspect
import json
import traceback

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from methods_registry import METHODS  # noqa: E402
import normopt  # noqa: E402

N_DEV = 4
AXIS = "x"
# Every dimension is a multiple of the 4 devices.
SHAPES = {
    "conv": {"kernel": (4, 4, 4, 8), "bias": (8,)},
    "dense": {"kernel": (8, 4), "bias": (4,)},
    "scale": (4,),
}
STACKED_SHAPES = {"layers": {"kernel": (4, 8, 8), "bias": (4, 8)}, "head": {"kernel": (8, 4)}}
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}
LAYOUTS = ("first", "last", "replicated", "stacked")


def _spec(layout, path, shape):
  if layout == "first":
    return P(AXIS)
  if layout == "last":
    return P(*([None] * (len(shape) - 1)), AXIS)
  if layout == "stacked":
    return P(AXIS) if str(path[0].key) == "layers" else P()
  return P()


def _typ(x):
  t = jax.typeof(x) if not isinstance(x, jax.ShapeDtypeStruct) else x
  sh = getattr(t, "sharding", None)
  spec = tuple(sh.spec) if sh is not None and hasattr(sh, "spec") else ()
  spec = spec + (None,) * (len(t.shape) - len(spec))
  return (tuple(t.shape), str(t.dtype), bool(getattr(t, "weak_type", False)), spec)


def _types(tree):
  return [_typ(x) for x in jax.tree.leaves(tree)]


def check(method, dtype, layout, mesh, run_jit=False):
  shapes = STACKED_SHAPES if layout == "stacked" else SHAPES
  rng = np.random.default_rng(0)
  kw = dict(method.kwargs)
  if layout == "stacked" and "stacked" in inspect.signature(method.make).parameters:
    kw["stacked"] = normopt.stacked_under("layers")
  tx = method.make(**kw)
  host = jax.tree.map(
      lambda s: rng.standard_normal(s).astype(np.float32), shapes,
      is_leaf=lambda s: isinstance(s, tuple))
  if method.params_kind == "sphere":
    host = jax.tree.map(np.asarray, normopt.normalize_vectors(host, stacked=kw.get("stacked")))
  shardings = jax.tree_util.tree_map_with_path(
      lambda p, x: NamedSharding(mesh, _spec(layout, p, x.shape)), host)
  params = jax.tree.map(
      lambda x, sh: jax.device_put(jnp.asarray(x, dtype), sh), host, shardings)
  s_eager = tx.init(params)
  if run_jit:  # compiled and run, not only traced
    s_jit = jax.jit(tx.init)(params)
  else:
    s_jit = jax.eval_shape(jax.jit(tx.init), params)
  u, s_new = jax.eval_shape(lambda p, s: tx.update(p, s, p), params, s_eager)
  problems = {}
  a, b, c = _types(s_eager), _types(s_jit), _types(s_new)
  if a != b:
    problems["init vs jit(init)"] = str([(x, y) for x, y in zip(a, b, strict=False) if x != y][:3])
  if a != c:
    diff = [(x, y) for x, y in zip(a, c, strict=False) if x != y]
    problems["init vs after update"] = str(diff[:3])
  if _types(u) != _types(params):
    problems["updates vs params"] = str(
        [(x, y) for x, y in zip(_types(u), _types(params), strict=False) if x != y][:3])
  return problems


# Cases where ``jax.jit(init)`` is compiled and run (elsewhere it is traced
# only, which is cheaper): the stacked layout, whose per-slice state is the
# one built from abstract values.
RUN_JIT = {f"{c}/f32/stacked" for c in ("explicit", "auto/outside set_mesh")}


def _optax_jit_init_runs(params):
  try:
    jax.block_until_ready(jax.jit(optax.adam(1e-3).init)(params))
    return True
  except ValueError:
    return False


def _contexts():
  """``(name, mesh, inside set_mesh?, dtypes, layouts)``: every dtype and
  layout on the Explicit mesh inside ``set_mesh``; float32 with split leaves,
  unstacked and stacked, in the other three contexts."""
  explicit, auto = (
      jax.make_mesh((N_DEV,), (AXIS,), axis_types=(t,))
      for t in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto)
  )
  f32 = {"f32": DTYPES["f32"]}
  some = ("first", "stacked")
  return [
      ("explicit", explicit, True, DTYPES, LAYOUTS),
      ("explicit/outside set_mesh", explicit, False, f32, some),
      ("auto", auto, True, f32, some),
      ("auto/outside set_mesh", auto, False, f32, some),
  ]


def main():
  out = {m.name: {} for m in METHODS}
  for cname, mesh, inside, dtypes, layouts in _contexts():
    with jax.set_mesh(mesh) if inside else contextlib.nullcontext():
      probe = jax.device_put(jnp.zeros(N_DEV), jax.sharding.NamedSharding(mesh, P(AXIS)))
      run_jit = _optax_jit_init_runs(probe)
      for m in METHODS:
        for dname, dtype in dtypes.items():
          for layout in layouts:
            case = f"{cname}/{dname}/{layout}"
            try:
              problems = check(m, dtype, layout, mesh, run_jit and case in RUN_JIT)
            except Exception as e:
              msg = f"{type(e).__name__}: {e}"[:1500]
              problems = {"error": msg + traceback.format_exc()[-1500:]}
            if problems:
              out[m.name][case] = problems
  return out


if __name__ == "__main__":
  print(json.dumps(main()))

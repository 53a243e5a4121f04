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
parameters' types.
"""

from __future__ import annotations

import os
import sys

N_DEV = 4
if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEV}"
  )
  os.environ["JAX_PLATFORMS"] = "cpu"

import inspect
import json
import traceback

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from methods_registry import METHODS  # noqa: E402

import normopt  # noqa: E402

AXIS = "x"
# Every dimension is a multiple of the 4 devices.
SHAPES = {
    "conv": {"kernel": (4, 4, 4, 8), "bias": (8,)},
    "dense": {"kernel": (8, 4), "bias": (4,)},
    "scale": (4,),
}
STACKED_SHAPES = {"layers": {"kernel": (4, 8, 8), "bias": (4, 8)}, "head": {"kernel": (8, 4)}}
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}


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


def check(method, dtype, layout, mesh):
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
  s_jit = jax.eval_shape(jax.jit(tx.init), params)
  u, s_new = jax.eval_shape(lambda p, s: tx.update(p, s, p), params, s_eager)
  problems = {}
  a, b, c = _types(s_eager), _types(s_jit), _types(s_new)
  if a != b:
    problems["init vs jit(init)"] = str([(x, y) for x, y in zip(a, b) if x != y][:3])
  if a != c:
    problems["init vs after update"] = str([(x, y) for x, y in zip(a, c) if x != y][:3])
  if _types(u) != _types(params):
    problems["updates vs params"] = str(
        [(x, y) for x, y in zip(_types(u), _types(params)) if x != y][:3])
  return problems


def main():
  mesh = jax.make_mesh((N_DEV,), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))
  out = {}
  with jax.set_mesh(mesh):
    for m in METHODS:
      res = {}
      for dname, dtype in DTYPES.items():
        for layout in ("first", "last", "replicated", "stacked"):
          case = f"{dname}/{layout}"
          try:
            problems = check(m, dtype, layout, mesh)
          except Exception as e:
            problems = {"error": f"{type(e).__name__}: {e}"[:1500] + traceback.format_exc()[-1500:]}
          if problems:
            res[case] = problems
      out[m.name] = res
  return out


if __name__ == "__main__":
  print(json.dumps(main()))

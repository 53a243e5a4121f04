"""Step overhead: every normopt optimizer against its stock optax base.

For each optimizer and three synthetic parameter trees (ResNet-50-like,
transformer-like, many tiny leaves) this measures

* the jitted full training-step time (``update`` + ``apply_updates``, params
  and optimizer state donated like a real train step), after warm-up, with the
  normopt variant and its optax base interleaved (ABBA order); the reported
  step ratio is the median of >= 20 per-repetition ratios;
* the compile-time ratio: ``jit(step).lower(...).compile()`` timed, fresh
  (new optimizer, new closure) each time, the two variants interleaved;
* the compile-time ratio against the anchor
  ``optax.chain(optax.clip_by_global_norm(1.0), base)``: optax's own cheapest
  norm-using chain on the same base, which users already accept (compiled
  once per base and tree);
* the optimizer-state size in bytes (from ``jax.eval_shape``, no allocation).

Optimizers that other modules have not added yet are skipped (``hasattr``).

Usage (from the repository root)::

  python benchmarks/step_overhead.py            # full: ~8 min on 2 quiet cores
  python benchmarks/step_overhead.py --quick   # into a temp folder
  python benchmarks/step_overhead.py --trees mlp24x1024 mlp150x128 \
      --only adam_norm radam_norm adabelief_norm diffgrad_norm  # issue 19's trees

The full run writes ``benchmarks/results/step_overhead.json`` and
``benchmarks/results/step_overhead.md``.
"""

from __future__ import annotations

from collections.abc import Callable
import datetime
import gc
import json
import math
import os
import platform
import statistics
import time
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import _common
import normopt

# ----------------------------------------------------------------------------
# Synthetic parameter trees (host NumPy, float32). Nesting follows Flax: a
# module's leaves share a parent path, so blocks="layer" finds real layers.
# ----------------------------------------------------------------------------


def resnet50_shapes(
    width: int = 64, classes: int = 1000, stages=(3, 4, 6, 3)
) -> dict:
  """ResNet-50 (bottleneck [3, 4, 6, 3]) conv/BN/fc shapes: 161 leaves."""
  tree = {
      "conv_init": {"kernel": (7, 7, 3, width)},
      "bn_init": {"scale": (width,), "bias": (width,)},
  }
  cin = width
  for s, n_blocks in enumerate(stages):
    mid = width * 2**s
    out = 4 * mid
    for b in range(n_blocks):
      block = {
          "conv1": {"kernel": (1, 1, cin, mid)},
          "bn1": {"scale": (mid,), "bias": (mid,)},
          "conv2": {"kernel": (3, 3, mid, mid)},
          "bn2": {"scale": (mid,), "bias": (mid,)},
          "conv3": {"kernel": (1, 1, mid, out)},
          "bn3": {"scale": (out,), "bias": (out,)},
      }
      if b == 0:
        block["proj_conv"] = {"kernel": (1, 1, cin, out)}
        block["proj_bn"] = {"scale": (out,), "bias": (out,)}
      tree[f"stage{s}_block{b}"] = block
      cin = out
  tree["head"] = {"kernel": (cin, classes), "bias": (classes,)}
  return tree


def transformer_shapes(
    d: int = 512, layers: int = 25, vocab: int = 32768, seq: int = 1024
) -> dict:
  """Pre-LN decoder: 16 leaves per layer (q, k, v, o, fc1, fc2, 2 LNs)."""
  tree = {
      "embed": {"embedding": (vocab, d)},
      "pos_embed": {"embedding": (seq, d)},
      "ln_f": {"scale": (d,), "bias": (d,)},
  }
  dense = lambda i, o: {"kernel": (i, o), "bias": (o,)}
  for i in range(layers):
    tree[f"layer{i}"] = {
        "ln1": {"scale": (d,), "bias": (d,)},
        "attn": {n: dense(d, d) for n in ("query", "key", "value", "out")},
        "ln2": {"scale": (d,), "bias": (d,)},
        "mlp": {"fc1": dense(d, 4 * d), "fc2": dense(4 * d, d)},
    }
  return tree


def tiny_leaves_shapes(layers: int = 150, width: int = 44) -> dict:
  """Many small Dense layers: ``2 * layers`` leaves of ~width**2 params."""
  return {
      f"dense{i}": {"kernel": (width, width), "bias": (width,)}
      for i in range(layers)
  }


def mlp_blocks_shapes(blocks: int, width: int) -> dict:
  """Dense(kernel, bias) + LayerNorm(scale, bias) blocks: ``4 * blocks`` leaves."""
  return {
      f"block{i}": {"dense": {"kernel": (width, width), "bias": (width,)},
                    "ln": {"scale": (width,), "bias": (width,)}}
      for i in range(blocks)
  }


def extra_tree_specs(quick: bool) -> dict[str, dict]:
  """Trees of issue 19's compile target, run only when named in ``--trees``.

  Each adds minutes to a full run (600 leaves compile in ~5-10 s per
  variant on 2 CPU cores), so the default run keeps the three trees above.
  """
  if quick:
    return {"mlp24x1024": mlp_blocks_shapes(2, 8),
            "mlp150x128": mlp_blocks_shapes(3, 4)}
  return {"mlp24x1024": mlp_blocks_shapes(24, 1024),
          "mlp150x128": mlp_blocks_shapes(150, 128)}


def tree_specs(quick: bool) -> dict[str, dict]:
  if quick:
    return {
        "resnet50": resnet50_shapes(width=4, classes=10, stages=(1,)),
        "transformer": transformer_shapes(d=8, layers=1, vocab=32, seq=8),
        "tiny_leaves": tiny_leaves_shapes(layers=4, width=8),
    }
  return {
      "resnet50": resnet50_shapes(),
      "transformer": transformer_shapes(),
      "tiny_leaves": tiny_leaves_shapes(),
  }


def _is_shape(x):
  return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def materialize(shapes: dict, seed: int, scale: float) -> Any:
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: (scale * rng.standard_normal(s, dtype=np.float32)),
      shapes,
      is_leaf=_is_shape,
  )


def tree_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------
# Optimizers and their bases.
# ----------------------------------------------------------------------------


class Pair(NamedTuple):
  name: str  # normopt attribute
  make: Callable[[], optax.GradientTransformation]
  base: str  # how the base is named in the report
  make_base: Callable[[], optax.GradientTransformation]
  blocks: str  # the alias's default block mode (for the O(#blocks) check)
  floor: bool = False  # also time the floor: base + one sum-of-squares pass


_ADAM = ("optax.adam", lambda: optax.adam(1e-3))
_SGDM = ("optax.sgd(momentum=0.9)", lambda: optax.sgd(0.1, momentum=0.9))
_ADAGRAD = ("optax.adagrad", lambda: optax.adagrad(0.1))


def _n(name):
  return lambda *a, **k: getattr(normopt, name)(*a, **k)


PAIRS = [
    Pair("adam_ng", lambda: _n("adam_ng")(1e-3), *_ADAM, "layer", True),
    Pair("adam_norm", lambda: _n("adam_norm")(1e-3), *_ADAM, "leaf", True),
    Pair("adam_ngadap", lambda: _n("adam_ngadap")(1e-3), *_ADAM, "layer"),
    Pair("sgd_ng", lambda: _n("sgd_ng")(0.1, momentum=0.9), *_SGDM, "layer",
         True),
    Pair("sgd_ngadap", lambda: _n("sgd_ngadap")(0.1, momentum=0.9), *_SGDM,
         "layer"),
    Pair("adagrad_ng", lambda: _n("adagrad_ng")(0.1), *_ADAGRAD, "layer",
         True),
    Pair("adagrad_bng", lambda: _n("adagrad_bng")(0.1), *_ADAGRAD, "layer",
         True),
    Pair("diffgrad", lambda: _n("diffgrad")(1e-3), *_ADAM, "leaf"),
    Pair("diffgrad_norm", lambda: _n("diffgrad_norm")(1e-3), *_ADAM, "leaf"),
    Pair("radam_norm", lambda: _n("radam_norm")(1e-3), "optax.radam",
         lambda: optax.radam(1e-3), "leaf", True),
    Pair("adabelief_norm", lambda: _n("adabelief_norm")(1e-3),
         "optax.adabelief", lambda: optax.adabelief(1e-3), "leaf", True),
    Pair("nd_adam",
         lambda: _n("nd_adam")(learning_rate_vector=0.05,
                               learning_rate_scalar=1e-3),
         *_ADAM, "unit"),
    Pair("sngd", lambda: _n("sngd")(0.1), "optax.sgd", lambda: optax.sgd(0.1),
         "global", True),
]

# (issue, optimizer, metric, limit). step_minus_floor: step ratio minus the
# floor's; anchor_compile_ratio: compile time over the anchor's.
TARGETS = [
    (6, "adam_ng", "step_ratio", 1.15),
    (6, "adam_norm", "step_ratio", 1.15),
    (6, "sgd_ng", "step_ratio", 1.2),
    (6, "nd_adam", "step_ratio", 1.5),
] + [(6, p.name, "compile_ratio", 1.5) for p in PAIRS] + [
    (13, "diffgrad", "step_ratio", 1.45),
    (13, "diffgrad_norm", "step_ratio", 1.45),
    (13, "sngd", "step_minus_floor", 0.1),
] + [(13, p.name, "anchor_compile_ratio", 1.15) for p in PAIRS] + [
    (19, n, "anchor_compile_ratio", 1.3)
    for n in ("adam_norm", "radam_norm", "adabelief_norm", "diffgrad_norm")
] + [(19, "adam_norm", "step_ratio", 1.25)]


def anchor_name(base: str) -> str:
  return f"optax.chain(optax.clip_by_global_norm(1.0), {base})"


def available_pairs(only=None):
  return [
      p for p in PAIRS
      if hasattr(normopt, p.name) and (not only or p.name in only)
  ]


# ----------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------


def sum_of_squares_pass() -> optax.GradientTransformation:
  """The one pass a normalization adds: per-leaf ``sum(g * g)``, kept in state.

  ``chain(sum_of_squares_pass(), base)`` is the floor for a normalized
  optimizer that reads the gradient once more than its base (the norms) and
  does nothing else extra.
  """

  def init_fn(params):
    return jax.tree.map(lambda p: jnp.zeros([], jnp.float32), params)

  def update_fn(updates, state, params=None):
    del state, params
    # g through a barrier: XLA would otherwise share g * g with Adam's second
    # moment and materialize it as a full-size temporary (3.5x Adam's step).
    sums = jax.tree.map(
        lambda g: jnp.sum(jnp.square(
            lax.optimization_barrier(g).astype(jnp.float32))),
        updates)
    return updates, sums

  return optax.GradientTransformation(init_fn, update_fn)


def make_step(tx):
  """A fresh closure: a real train step's optimizer part, buffers donated."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def count_blocks(params, mode):
  if mode == "unit":
    return int(sum(
        x.shape[-1] if x.ndim >= 2 else 1 for x in jax.tree.leaves(params)))
  return len(normopt.block_partition(params, mode))


class Variant:
  """One optimizer on one tree: its compiled step and its live buffers."""

  def __init__(self, make_tx, params_host, grads, sphere):
    self.make_tx = make_tx
    self.params_host = params_host
    self.grads = grads
    self.sphere = sphere
    self.compiled = None
    self.params = self.state = None

  def fresh_params(self):
    p = jax.tree.map(jnp.array, self.params_host)
    if self.sphere and hasattr(normopt, "normalize_vectors"):
      p = normopt.normalize_vectors(p)
    return p

  def state_bytes(self):
    tx = self.make_tx()
    shapes = jax.eval_shape(tx.init, self.params_host)
    return int(sum(
        math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(shapes)))

  def compile_once(self):
    """Lower + compile with a fresh optimizer and closure; returns seconds."""
    tx = self.make_tx()
    if self.params is None:
      self.params = self.fresh_params()
      self.state = jax.block_until_ready(tx.init(self.params))
    t0 = time.perf_counter()
    compiled = make_step(tx).lower(self.params, self.state, self.grads).compile()
    dt = time.perf_counter() - t0
    self.compiled = compiled
    return dt

  def run(self, n):
    """``n`` steps; returns seconds per step."""
    p, s, g, f = self.params, self.state, self.grads, self.compiled
    t0 = time.perf_counter()
    for _ in range(n):
      p, s = f(p, s, g)
    jax.block_until_ready((p, s))
    dt = time.perf_counter() - t0
    self.params, self.state = p, s
    return dt / n

  def release(self):
    self.compiled = self.params = self.state = None


def _quantiles(xs):
  q = np.quantile(np.asarray(xs), [0.25, 0.5, 0.75])
  return [float(v) for v in q]


def anchor_compile_s(pair, params_host, grads, cache):
  """Compile seconds of ``chain(clip_by_global_norm(1.0), base)``, once per base."""
  if pair.base not in cache:
    v = Variant(
        lambda: optax.chain(optax.clip_by_global_norm(1.0), pair.make_base()),
        params_host, grads, sphere=False)
    cache[pair.base] = v.compile_once()
    v.release()
  return cache[pair.base]


def measure_pair(pair, params_host, grads, reps, compile_reps, min_time,
                 anchors):
  ng = Variant(pair.make, params_host, grads, sphere=pair.name == "nd_adam")
  base = Variant(pair.make_base, params_host, grads, sphere=False)
  out = {"optimizer": pair.name, "base": pair.base}
  out["state_bytes"] = ng.state_bytes()
  out["base_state_bytes"] = base.state_bytes()
  out["extra_state_bytes"] = out["state_bytes"] - out["base_state_bytes"]
  out["n_blocks"] = count_blocks(params_host, pair.blocks)
  out["blocks"] = pair.blocks

  # Compile time: fresh each, interleaved, alternating which goes first.
  c_ng, c_base = [], []
  for r in range(compile_reps):
    order = (base, ng) if r % 2 == 0 else (ng, base)
    for v in order:
      (c_base if v is base else c_ng).append(v.compile_once())
  out["compile_s"] = statistics.median(c_ng)
  out["base_compile_s"] = statistics.median(c_base)
  out["compile_ratios"] = [a / b for a, b in zip(c_ng, c_base, strict=True)]
  out["compile_ratio"] = statistics.median(out["compile_ratios"])
  out["anchor"] = anchor_name(pair.base)
  out["anchor_compile_s"] = anchor_compile_s(pair, params_host, grads, anchors)
  out["anchor_compile_ratio"] = out["compile_s"] / out["anchor_compile_s"]

  variants = [base, ng]
  floor = None
  if pair.floor:
    floor = Variant(
        lambda: optax.chain(sum_of_squares_pass(), pair.make_base()),
        params_host, grads, sphere=False)
    out["floor_compile_s"] = floor.compile_once()
    variants.append(floor)

  # Step time: warm-up, calibrate the steps per measurement, ABBA interleave.
  for v in variants:
    v.run(2)
  t1 = min(base.run(1), base.run(1))
  inner = max(1, math.ceil(min_time / t1))
  t_ng, t_base, ratios, floor_ratios = [], [], [], []
  for r in range(reps):
    order = variants if r % 2 == 0 else variants[::-1]
    times = {}
    for v in order:
      times[id(v)] = v.run(inner)
    t_ng.append(times[id(ng)])
    t_base.append(times[id(base)])
    ratios.append(times[id(ng)] / times[id(base)])
    if floor is not None:
      floor_ratios.append(times[id(floor)] / times[id(base)])
  finite = all(
      bool(jnp.all(jnp.isfinite(x)))
      for x in jax.tree.leaves((ng.params, ng.state))
      if jnp.issubdtype(x.dtype, jnp.inexact)
  )
  for v in variants:
    v.release()
  if floor_ratios:
    # Base + one sum-of-squares pass over g, timed like the others.
    out["floor_ratios"] = floor_ratios
    out["floor_ratio"] = statistics.median(floor_ratios)
    out["floor_compile_ratio"] = out["floor_compile_s"] / out["base_compile_s"]
    out["step_minus_floor"] = statistics.median(
        [a - b for a, b in zip(ratios, floor_ratios, strict=True)])
  out["steps_per_measurement"] = inner
  out["step_ms"] = 1e3 * statistics.median(t_ng)
  out["base_step_ms"] = 1e3 * statistics.median(t_base)
  out["step_ratios"] = ratios
  q25, med, q75 = _quantiles(ratios)
  out["step_ratio"] = med
  out["step_ratio_q25"] = q25
  out["step_ratio_q75"] = q75
  out["finite_after_steps"] = finite
  return out


def _load():
  try:
    return [float(x) for x in os.getloadavg()]
  except OSError:
    return None


def run(quick: bool, only=None, trees=None, checkpoint=None):
  # One fresh compile per variant (it also gives the executable that is
  # timed): a full run compiles 78 steps of up to 2,000 leaves, which on a
  # shared 2-core CPU already takes most of the run.
  # 15 step repetitions and 300 tiny leaves keep the full run under 10 min on
  # two quiet cores; the anchor's compile is shared by every pair on a base.
  t_start = time.perf_counter()
  reps, compile_reps, min_time = (3, 1, 0.0) if quick else (15, 1, 0.05)
  pairs = available_pairs(only)
  specs = tree_specs(quick)
  if trees:
    specs = {k: v for k, v in {**specs, **extra_tree_specs(quick)}.items()
             if k in trees}
  skipped = [p.name for p in PAIRS if not hasattr(normopt, p.name)]
  meta = {
      "date_utc": datetime.datetime.now(datetime.UTC).isoformat(
          timespec="seconds"),
      "quick": quick,
      "jax": jax.__version__,
      "optax": optax.__version__,
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "cpu_count": os.cpu_count(),
      "platform": platform.platform(),
      "reps": reps,
      "compile_reps": compile_reps,
      "loadavg_start": _load(),
      "skipped_not_in_normopt": skipped,
  }
  results, tree_info = [], {}
  bar = tqdm(total=len(pairs) * len(specs), desc="step_overhead")
  for t_i, (tname, shapes) in enumerate(specs.items()):
    params_host = materialize(shapes, seed=t_i, scale=0.05)
    grads = jax.tree.map(jnp.asarray, materialize(shapes, seed=100 + t_i,
                                                  scale=1e-2))
    tree_info[tname] = {
        "n_params": int(sum(x.size for x in jax.tree.leaves(params_host))),
        "n_leaves": len(jax.tree.leaves(params_host)),
        "n_layer_blocks": count_blocks(params_host, "layer"),
        "param_bytes": tree_bytes(params_host),
    }
    anchors = {}
    for pair in pairs:
      bar.set_postfix_str(f"{tname}/{pair.name}")
      r = measure_pair(pair, params_host, grads, reps, compile_reps, min_time,
                       anchors)
      r["tree"] = tname
      results.append(r)
      bar.update()
      gc.collect()
      if checkpoint is not None:
        checkpoint({"meta": meta, "trees": tree_info, "results": results,
                    "targets": evaluate_targets(results)})
    del params_host, grads
    gc.collect()
  bar.close()
  meta["loadavg_end"] = _load()
  meta["elapsed_s"] = time.perf_counter() - t_start
  return {
      "meta": meta,
      "trees": tree_info,
      "results": results,
      "targets": evaluate_targets(results),
  }


def evaluate_targets(results):
  rows = []
  for r in results:
    for issue, name, metric, limit in TARGETS:
      if r["optimizer"] == name and metric in r:
        rows.append({
            "issue": issue, "optimizer": name, "tree": r["tree"],
            "metric": metric, "limit": limit, "value": r[metric],
            "met": r[metric] <= limit,
        })
    # State bytes <= base + O(#blocks): at most 8 bytes per block (+ counts).
    # diffgrad keeps the previous gradient by its definition, double-buffered
    # (two tensors the size of params); it is reported, not held to this bound.
    if r["optimizer"] not in ("diffgrad", "diffgrad_norm"):
      rows.append({
          "issue": 6, "optimizer": r["optimizer"], "tree": r["tree"],
          "metric": "extra_state_bytes",
          "limit": 8 * r["n_blocks"] + 64,
          "value": r["extra_state_bytes"],
          "met": r["extra_state_bytes"] <= 8 * r["n_blocks"] + 64,
      })
  return rows


# ----------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------


def _fmt_bytes(n):
  sign = "-" if n < 0 else "+" if n > 0 else ""
  n = abs(n)
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
    n /= 1024


def _elapsed(meta):
  e = meta.get("elapsed_s")
  return "run time not recorded" if e is None else f"run time {e / 60:.1f} min"


def to_markdown(data) -> str:
  meta, trees, results = data["meta"], data["trees"], data["results"]
  tnames = list(trees)
  lines = [
      "# Step overhead: normopt optimizers vs their optax base",
      "",
      f"Run {meta['date_utc']} on {meta['device']} ({meta['cpu_count']} "
      f"cores, {meta['platform']}), jax {meta['jax']}, optax {meta['optax']}; "
      f"load average at start {meta['loadavg_start']}, at end "
      f"{meta.get('loadavg_end')}; {_elapsed(meta)}. Step ratio: median of "
      f"{meta['reps']} "
      f"interleaved ratios (jitted update + apply_updates, buffers donated); "
      f"compile ratio: median of {meta['compile_reps']} fresh "
      "lower+compile. Lower is better; 1.00x = as fast as the base.",
      "",
      "| tree | params | leaves | layer blocks |",
      "|---|---:|---:|---:|",
  ]
  for t in tnames:
    i = trees[t]
    lines.append(f"| {t} | {i['n_params']/1e6:.2f}M | {i['n_leaves']} | "
                 f"{i['n_layer_blocks']} |")
  lines += ["", "## Step-time ratio (normopt / base)", ""]
  by = {(r["optimizer"], r["tree"]): r for r in results}
  opts = list(dict.fromkeys(r["optimizer"] for r in results))
  head = "| optimizer | base | " + " | ".join(tnames) + " |"
  lines += [head, "|---|---|" + "---:|" * len(tnames)]
  for o in opts:
    cells = []
    for t in tnames:
      r = by.get((o, t))
      cells.append("" if r is None else
                   f"{r['step_ratio']:.2f}x ({r['step_ms']:.1f} / "
                   f"{r['base_step_ms']:.1f} ms)")
    base = next(r["base"] for r in results if r["optimizer"] == o)
    lines.append(f"| `{o}` | `{base}` | " + " | ".join(cells) + " |")
  floors = [o for o in opts if any("floor_ratio" in r for r in results
                                   if r["optimizer"] == o)]
  if floors:
    lines += [
        "", "## Against the floor", "",
        "Floor: the base optimizer chained after a transformation that only "
        "computes every leaf's sum of squares of g (the one extra pass over "
        "the gradient that a normalization needs), timed interleaved with "
        "the two others. Cells: step ratio / floor ratio, both against the "
        "base; then the same for compile time (one compile of the floor).",
        "",
        "| optimizer | " + " | ".join(f"step {t}" for t in tnames) + " | "
        + " | ".join(f"compile {t}" for t in tnames) + " |",
        "|---|" + "---:|" * (2 * len(tnames))]
    for o in floors:
      cells = []
      for t in tnames:
        r = by.get((o, t))
        cells.append("" if r is None or "floor_ratio" not in r else
                     f"{r['step_ratio']:.2f}x / {r['floor_ratio']:.2f}x")
      for t in tnames:
        r = by.get((o, t))
        cells.append("" if r is None or "floor_ratio" not in r else
                     f"{r['compile_ratio']:.2f}x / "
                     f"{r['floor_compile_ratio']:.2f}x")
      lines.append(f"| `{o}` | " + " | ".join(cells) + " |")
  lines += ["", "## Compile time against the anchor", "",
            "Anchor: `optax.chain(optax.clip_by_global_norm(1.0), base)`, "
            "optax's own cheapest norm-using chain on the same base (target "
            "<= 1.15x). Cells: normopt / anchor (normopt s, anchor s).", "",
            "| optimizer | " + " | ".join(tnames) + " |",
            "|---|" + "---:|" * len(tnames)]
  for o in opts:
    cells = []
    for t in tnames:
      r = by.get((o, t))
      cells.append("" if r is None or "anchor_compile_s" not in r else
                   f"{r['anchor_compile_ratio']:.2f}x ({r['compile_s']:.2f} "
                   f"/ {r['anchor_compile_s']:.2f} s)")
    lines.append(f"| `{o}` | " + " | ".join(cells) + " |")
  lines += ["", "## Compile-time ratio and optimizer-state bytes", ""]
  head = ("| optimizer | " + " | ".join(f"compile {t}" for t in tnames)
          + " | " + " | ".join(f"state vs base, {t}" for t in tnames) + " |")
  lines += [head, "|---|" + "---:|" * (2 * len(tnames))]
  for o in opts:
    cc, sc = [], []
    for t in tnames:
      r = by.get((o, t))
      cc.append("" if r is None else
                f"{r['compile_ratio']:.2f}x ({r['compile_s']:.2f} s)")
      sc.append("" if r is None else
                f"{_fmt_bytes(r['extra_state_bytes'])} "
                f"({r['n_blocks']} {r['blocks']} blocks)")
    lines.append(f"| `{o}` | " + " | ".join(cc) + " | " + " | ".join(sc)
                 + " |")
  lines += ["", "## Targets (issues 6 and 13)", "",
            "| issue | optimizer | tree | metric | value | limit | met |",
            "|---:|---|---|---|---:|---:|---|"]
  for t in data["targets"]:
    if t["metric"] == "extra_state_bytes":
      v, lim = _fmt_bytes(t["value"]), _fmt_bytes(t["limit"])
    elif t["metric"] == "step_minus_floor":
      v, lim = f"{t['value']:+.2f}", f"{t['limit']:+.2f}"
    else:
      v, lim = f"{t['value']:.2f}x", f"{t['limit']:.2f}x"
    lines.append(f"| {t.get('issue', 6)} | `{t['optimizer']}` | {t['tree']} "
                 f"| {t['metric']} | {v} | {lim} | "
                 f"{'yes' if t['met'] else '**no**'} |")
  if meta["skipped_not_in_normopt"]:
    lines += ["", "Not in normopt at run time (skipped): "
              + ", ".join(f"`{s}`" for s in meta["skipped_not_in_normopt"])
              + "."]
  return "\n".join(lines) + "\n"


def plot(data, path):
  """Bar chart of step and compile ratios per optimizer and tree."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tnames = list(data["trees"])
  opts = list(dict.fromkeys(r["optimizer"] for r in data["results"]))
  by = {(r["optimizer"], r["tree"]): r for r in data["results"]}
  fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
  w = 0.8 / len(tnames)
  x = np.arange(len(opts))
  for ax, metric, title in ((axes[0], "step_ratio", "step time"),
                            (axes[1], "compile_ratio", "compile time")):
    for j, t in enumerate(tnames):
      ys = [by[(o, t)][metric] if (o, t) in by else np.nan for o in opts]
      ax.bar(x + (j - (len(tnames) - 1) / 2) * w, ys, w, label=t)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.5, color="r", lw=0.8, ls="--")
    ax.set_ylabel(f"{title} / optax base")
    ax.set_yscale("log")
  axes[0].legend(fontsize=8)
  axes[1].set_xticks(x, opts, rotation=35, ha="right")
  axes[0].set_title("normopt step overhead vs optax (dashed: 1.5x)")
  _common.save_figure(fig, path)


def main(argv=None):
  ap = _common.make_parser(__doc__, "tiny trees, few repetitions (seconds)")
  ap.add_argument("--only", nargs="*", help="optimizer names to run")
  ap.add_argument("--trees", nargs="*", help="tree names to run")
  args = ap.parse_args(argv)
  out = _common.output_dir(ap, args, "step_overhead",
                           partial=bool(args.only or args.trees))
  os.makedirs(out, exist_ok=True)

  def write(data, final=False):
    with open(os.path.join(out, "step_overhead.json"), "w") as f:
      json.dump(data, f, indent=1)
    md = to_markdown(data)
    with open(os.path.join(out, "step_overhead.md"), "w") as f:
      f.write(md)
    if final:
      plot(data, os.path.join(out, "step_overhead.png"))
    return md

  # Partial results are written after every pair (a long run can be cut).
  with _common.timed_compiles():
    data = run(args.quick, args.only, args.trees, checkpoint=write)
  data["meta"]["complete"] = True
  print(write(data, final=True))
  return data


if __name__ == "__main__":
  main()

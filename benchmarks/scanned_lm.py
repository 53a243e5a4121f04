"""Scanned layers: block-normalized Adam on a character LM whose layers are stacked.

Large JAX models stack their layers: ``flax.linen.scan`` (or ``nnx.scan``)
stores the L layers of a transformer as ONE leaf per parameter with a leading
axis of size L (kernel ``(L, d, d)``). A block-wise optimizer that sees the
pytree then normalizes all L layers as one block, silently: nothing fails,
the model trains, but every "layer" block is really the whole stack. normopt's
``stacked=`` keyword fixes that; ``normopt.stacked_under("layers")`` marks the
leading axis of every leaf under the key ``"layers"`` as a stack axis.

This script trains a character-level transformer LM (8 pre-LayerNorm blocks,
d_model 128, 4 heads, MLP 4x, causal attention, learned positions, context
64) on real English text, CPython's ``pydoc_data.topics`` (the help texts of
``help()``; no download), with its blocks scanned under ``"layers"``, and
compares

  * ``optax.adam(lr)``,
  * ``normopt.adam_ng(lr, stacked=normopt.stacked_under("layers"))``: one
    block per layer slice, exactly the unrolled model's blocks,
  * ``normopt.adam_ng(lr)``: today's silent failure, the whole stack of each
    sublayer (``layers/qkv``, ...) one block,

for 1,500 steps and 3 seeds (the same initial weights and batches for every
optimizer), reporting train/validation loss curves and their final values,
and the per-layer norms of each optimizer's total parameter change.

It also measures what scanning buys and what the normalization costs: the
compile time (``jax.jit(step).lower(...).compile()``, fresh each time,
variants interleaved) and the median step time (variants interleaved,
reported as ratios measured in the same run) of the full train step for the
scanned model and its unrolled twin (the same block in a Python loop, params
``layers_0 ... layers_7``), with ``optax.adam`` and with the stacked
``adam_ng``; and the compile time of the optimizer update alone.

Run from the repository root::

  python benchmarks/scanned_lm.py                           # full run
  python benchmarks/scanned_lm.py --quick --out /tmp/slm    # seconds

The full run writes ``benchmarks/results/scanned_lm.{json,md,png}``; a
``--quick`` run never writes there (it needs ``--out``).
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import platform
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import _common
import normopt

STACK = "layers"  # the key the scanned blocks live under

FULL = dict(layers=8, d_model=128, heads=4, context=64, batch=8, steps=1500,
            eval_every=100, seeds=3, eval_batches=16, timing_reps=15,
            compile_reps=3, min_time=0.3, xla_options=None)
QUICK = dict(layers=2, d_model=32, heads=2, context=16, batch=8, steps=20,
             eval_every=10, seeds=1, eval_batches=2, timing_reps=3,
             compile_reps=1, min_time=0.0,
             # Halves XLA:CPU compile time, which is most of a quick run.
             xla_options=_common.QUICK_CHEAP_COMPILE_OPTIONS)

# One step size for all three (the adam_ng pair must share one). Chosen from
# 400-step, 1-seed runs of the full model at 1e-3 and 3e-3: 1e-3 gave the
# lower validation loss for every optimizer (adam 2.23 vs 2.33, adam_ng
# 2.20 vs 2.33 nats/char); no warm-up or decay, as in the other benchmarks.
LR = {"adam": 1e-3, "adam_ng": 1e-3}


def _stacked():
  """``stacked=`` for the scanned model: one stack axis under ``STACK``."""
  return normopt.stacked_under(STACK)


def make_optimizers(lr=None):
  """name -> zero-argument factory of the optax optimizer."""
  lr = dict(LR, **(lr or {}))
  return {
      "adam": lambda: optax.adam(lr["adam"]),
      "adam_ng(stacked)": lambda: normopt.adam_ng(lr["adam_ng"], stacked=_stacked()),
      "adam_ng": lambda: normopt.adam_ng(lr["adam_ng"]),
  }


# ----------------------------------------------------------------------------
# Data: the help texts CPython ships, characters as tokens.
# ----------------------------------------------------------------------------


def load_text(val_fraction=0.1):
  """pydoc topics joined in sorted key order; last ``val_fraction`` is val."""
  from pydoc_data.topics import topics
  text = "\n\n".join(topics[k] for k in sorted(topics))
  vocab = sorted(set(text))
  table = {c: i for i, c in enumerate(vocab)}
  ids = np.fromiter((table[c] for c in text), np.int32, len(text))
  n_val = int(len(ids) * val_fraction)
  return ids[:-n_val], ids[-n_val:], vocab


def window_starts(rng, n_tokens, context, shape):
  return rng.integers(0, n_tokens - context - 1, size=shape, dtype=np.int32)


def gather(ids, starts, context):
  """(..., ) starts -> inputs and targets of shape (..., context)."""
  pos = starts[..., None] + jnp.arange(context + 1)
  seq = ids[pos]
  return seq[..., :-1], seq[..., 1:]


# ----------------------------------------------------------------------------
# Model: one pre-LayerNorm block, scanned under "layers" or unrolled.
# ----------------------------------------------------------------------------


class Block(nn.Module):
  """Pre-LN transformer block; ``(x, _) -> (x, None)`` so it can be scanned."""
  d_model: int
  heads: int

  @nn.compact
  def __call__(self, x, _=None):
    b, t, d = x.shape
    hd = d // self.heads
    h = nn.LayerNorm(name="ln_attn")(x)
    qkv = nn.Dense(3 * d, name="qkv")(h).reshape(b, t, 3, self.heads, hd)
    a = jax.nn.dot_product_attention(
        qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=True)
    x = x + nn.Dense(d, name="attn_out")(a.reshape(b, t, d))
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = nn.gelu(nn.Dense(4 * d, name="mlp_in")(h))
    return x + nn.Dense(d, name="mlp_out")(h), None


class CharLM(nn.Module):
  """Embeddings, ``layers`` blocks (scanned or unrolled), LayerNorm, head."""
  vocab: int
  layers: int
  d_model: int
  heads: int
  context: int
  scanned: bool = True

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.d_model, name="embed")(tokens)
    pos = self.param("pos", nn.initializers.normal(0.02),
                     (self.context, self.d_model))
    x = x + pos[: tokens.shape[-1]]
    if self.scanned:
      stack = nn.scan(Block, variable_axes={"params": 0},
                      split_rngs={"params": True}, length=self.layers)
      x, _ = stack(self.d_model, self.heads, name=STACK)(x, None)
    else:
      for i in range(self.layers):
        x, _ = Block(self.d_model, self.heads, name=f"{STACK}_{i}")(x, None)
    x = nn.LayerNorm(name="ln_out")(x)
    # Small head init: the first loss is ln(vocab), chance, for any width.
    return nn.Dense(self.vocab, kernel_init=nn.initializers.normal(0.02),
                    name="head")(x)


def make_models(cfg, vocab):
  kw = dict(vocab=vocab, layers=cfg["layers"], d_model=cfg["d_model"],
            heads=cfg["heads"], context=cfg["context"])
  return CharLM(scanned=True, **kw), CharLM(scanned=False, **kw)


def to_unrolled(params, layers):
  """Scanned params -> the unrolled twin's (slice i of the stack -> layers_i)."""
  params = dict(params)
  stack = params.pop(STACK)
  for i in range(layers):
    params[f"{STACK}_{i}"] = jax.tree.map(lambda a, i=i: a[i], stack)
  return params


def init_params(model, seed, cfg):
  tokens = jnp.zeros((1, cfg["context"]), jnp.int32)
  return model.init(jax.random.key(seed), tokens)["params"]


def loss_fn(model, params, x, y):
  logits = model.apply({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def layer_change_norms(params, params0):
  """Per layer slice: ‖θ_l − θ_l(0)‖ over all leaves of block l of the stack."""
  sq = jax.tree.map(
      lambda a, b: jnp.sum(jnp.square(a - b).reshape(a.shape[0], -1), -1),
      params[STACK], params0[STACK])
  return jnp.sqrt(sum(jax.tree.leaves(sq)))


# ----------------------------------------------------------------------------
# Training: one compiled chunk of steps per optimizer, seeds one after another.
# ----------------------------------------------------------------------------


def make_chunk(model, tx, context, xla_options=None):
  """jitted: ``len(starts)`` train steps (a ``lax.scan``), then evaluation.

  Returns the new params and state, the minibatch loss of every step (before
  its update) and the mean loss over the fixed train and validation windows.
  One function, so one compile per optimizer.
  """

  def step(carry, starts, ids):
    params, state = carry
    x, y = gather(ids, starts, context)
    loss, grads = jax.value_and_grad(
        lambda p: loss_fn(model, p, x, y))(params)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  def evaluate(params, ids, starts):
    def one(_, s):
      x, y = gather(ids, s, context)
      return None, loss_fn(model, params, x, y)
    return jax.lax.scan(one, None, starts)[1].mean()

  @functools.partial(jax.jit, compiler_options=xla_options)
  def chunk(params, state, ids_tr, ids_va, starts, ev_tr, ev_va):
    (params, state), losses = jax.lax.scan(
        lambda c, s: step(c, s, ids_tr), (params, state), starts)
    return (params, state, losses, evaluate(params, ids_tr, ev_tr),
            evaluate(params, ids_va, ev_va))

  return chunk


def train_all(cfg, data, optimizers, quiet=False):
  from tqdm import tqdm
  train_ids, val_ids, vocab = data
  scanned, _ = make_models(cfg, len(vocab))
  ids_tr, ids_va = jnp.asarray(train_ids), jnp.asarray(val_ids)
  n_chunks = cfg["steps"] // cfg["eval_every"]
  # Fixed evaluation windows, the same for every optimizer, seed and step.
  rng = np.random.default_rng(10_000)
  shape = (cfg["eval_batches"], cfg["batch"])
  ev_tr = jnp.asarray(window_starts(rng, len(train_ids), cfg["context"], shape))
  ev_va = jnp.asarray(window_starts(rng, len(val_ids), cfg["context"], shape))
  init = jax.jit(lambda seed: init_params(scanned, seed, cfg),
                 compiler_options=cfg["xla_options"])
  change = jax.jit(layer_change_norms)
  results = {}
  bar = tqdm(total=len(optimizers) * cfg["seeds"] * n_chunks,
             desc="scanned_lm", disable=quiet)
  for name, make_tx in optimizers.items():
    tx = make_tx()
    chunk = make_chunk(scanned, tx, cfg["context"], cfg["xla_options"])
    res = {k: [] for k in ("train_loss", "val_loss", "batch_loss",
                           "initial_loss", "layer_change_norm", "seconds")}
    for seed in range(cfg["seeds"]):
      t0 = time.perf_counter()
      params0 = init(seed)
      rng = np.random.default_rng(seed)
      starts = window_starts(rng, len(train_ids), cfg["context"],
                             (n_chunks, cfg["eval_every"], cfg["batch"]))
      params, state = params0, tx.init(params0)
      tr, va, batch = [], [], []
      for c in range(n_chunks):
        params, state, losses, l_tr, l_va = chunk(
            params, state, ids_tr, ids_va, jnp.asarray(starts[c]), ev_tr,
            ev_va)
        losses = np.asarray(losses)
        if c == 0:
          res["initial_loss"].append(float(losses[0]))
        batch.append(float(losses.mean()))
        tr.append(float(l_tr))
        va.append(float(l_va))
        bar.update()
        bar.set_postfix(opt=name, seed=seed, val=f"{va[-1]:.3f}")
      res["train_loss"].append(tr)
      res["val_loss"].append(va)
      res["batch_loss"].append(batch)
      res["layer_change_norm"].append(
          np.asarray(change(params, params0)).tolist())
      res["seconds"].append(time.perf_counter() - t0)
    for key in ("train_loss", "val_loss"):
      v = np.asarray(res[key])[:, -1]
      res[f"final_{key}"] = v.tolist()
      res[f"final_{key}_mean"], res[f"final_{key}_std"] = _common.mean_std(v)
    results[name] = res
  bar.close()
  return results


# ----------------------------------------------------------------------------
# Compile and step time: scanned vs unrolled, adam vs adam_ng(stacked).
# ----------------------------------------------------------------------------


def make_step(model, tx, context, xla_options=None):
  """A fresh jitted train step (loss, grad, update, apply), buffers donated."""

  def step(params, state, ids, starts):
    x, y = gather(ids, starts, context)
    loss, grads = jax.value_and_grad(
        lambda p: loss_fn(model, p, x, y))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return jax.jit(step, donate_argnums=(0, 1), compiler_options=xla_options)


class Variant:
  """One (model, optimizer) train step: its compiled step and live buffers."""

  def __init__(self, model, params, make_tx, cfg, ids, starts):
    self.model, self.params0, self.make_tx = model, params, make_tx
    self.context, self.xla_options = cfg["context"], cfg["xla_options"]
    self.ids, self.starts = ids, starts
    self.compiled = self.params = self.state = None

  def compile_once(self):
    tx = self.make_tx()
    params = jax.tree.map(jnp.array, self.params0)
    state = jax.block_until_ready(tx.init(params))
    t0 = time.perf_counter()
    compiled = make_step(self.model, tx, self.context,
                         self.xla_options).lower(
        params, state, self.ids, self.starts).compile()
    dt = time.perf_counter() - t0
    self.compiled, self.params, self.state = compiled, params, state
    return dt

  def run(self, n):
    p, s, f = self.params, self.state, self.compiled
    t0 = time.perf_counter()
    for _ in range(n):
      p, s, _ = f(p, s, self.ids, self.starts)
    jax.block_until_ready((p, s))
    self.params, self.state = p, s
    return (time.perf_counter() - t0) / n


def compile_update_once(make_tx, params, xla_options=None):
  """Seconds to lower + compile the optimizer update alone (fresh closure)."""
  tx = make_tx()
  state = tx.init(params)

  def update(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  t0 = time.perf_counter()
  jax.jit(update, compiler_options=xla_options).lower(
      params, state, params).compile()
  return time.perf_counter() - t0


def _ratios(a, b):
  r = [x / y for x, y in zip(a, b, strict=True)]
  q25, med, q75 = (float(v) for v in np.quantile(r, [0.25, 0.5, 0.75]))
  return dict(median=med, q25=q25, q75=q75, all=r)


def measure_timing(cfg, data, optimizers, quiet=False):
  train_ids, _, vocab = data
  scanned, unrolled = make_models(cfg, len(vocab))
  p_scan = jax.jit(lambda: init_params(scanned, 0, cfg),
                   compiler_options=cfg["xla_options"])()
  p_unroll = jax.jit(to_unrolled, static_argnums=1)(p_scan, cfg["layers"])
  ids = jnp.asarray(train_ids)
  starts = jnp.asarray(window_starts(np.random.default_rng(0), len(train_ids),
                                     cfg["context"], (cfg["batch"],)))
  opt_names = [n for n in ("adam", "adam_ng(stacked)") if n in optimizers]
  variants = {}
  for model_name, model, p in (("scanned", scanned, p_scan),
                               ("unrolled", unrolled, p_unroll)):
    for o in opt_names:
      variants[(model_name, o)] = Variant(model, p, optimizers[o], cfg, ids,
                                          starts)
  keys = list(variants)
  compile_s = {k: [] for k in keys}
  for r in range(cfg["compile_reps"]):
    for k in (keys if r % 2 == 0 else keys[::-1]):
      compile_s[k].append(variants[k].compile_once())
  # Optimizer update alone, on the scanned params (and the unstacked adam_ng).
  update_names = [n for n in ("adam", "adam_ng(stacked)", "adam_ng")
                  if n in optimizers]
  update_s = {n: [] for n in update_names}
  for r in range(cfg["compile_reps"]):
    for n in (update_names if r % 2 == 0 else update_names[::-1]):
      update_s[n].append(compile_update_once(optimizers[n], p_scan,
                                             cfg["xla_options"]))
  # Step time: warm up, then every variant once per repetition, the order
  # reversed every other repetition; ratios are taken within a repetition.
  for k in keys:
    variants[k].run(1)
  t1 = variants[keys[0]].run(2)
  inner = max(1, math.ceil(cfg["min_time"] / t1))
  step_s = {k: [] for k in keys}
  from tqdm import tqdm
  for r in tqdm(range(cfg["timing_reps"]), desc="step time", disable=quiet):
    for k in (keys if r % 2 == 0 else keys[::-1]):
      step_s[k].append(variants[k].run(inner))

  def label(k):
    return f"{k[0]}/{k[1]}"

  out = {
      "steps_per_measurement": inner,
      "compile_s": {label(k): v for k, v in compile_s.items()},
      "step_s": {label(k): v for k, v in step_s.items()},
      "update_compile_s": update_s,
      "compile_s_median": {label(k): statistics.median(v)
                           for k, v in compile_s.items()},
      "step_ms_median": {label(k): 1e3 * statistics.median(v)
                         for k, v in step_s.items()},
      "update_compile_s_median": {n: statistics.median(v)
                                  for n, v in update_s.items()},
      "scanned_over_unrolled": {},
      "ng_over_adam": {},
  }
  for o in opt_names:
    out["scanned_over_unrolled"][o] = {
        "compile": _ratios(compile_s[("scanned", o)],
                           compile_s[("unrolled", o)]),
        "step": _ratios(step_s[("scanned", o)], step_s[("unrolled", o)]),
    }
  if "adam_ng(stacked)" in opt_names:
    ng = "adam_ng(stacked)"
    for m in ("scanned", "unrolled"):
      out["ng_over_adam"][m] = {
          "compile": _ratios(compile_s[(m, ng)], compile_s[(m, "adam")]),
          "step": _ratios(step_s[(m, ng)], step_s[(m, "adam")]),
      }
    out["ng_over_adam"]["update_only"] = {
        n: {"compile": _ratios(update_s[n], update_s["adam"])}
        for n in update_names if n != "adam"}
  return out


# ----------------------------------------------------------------------------
# Results: JSON, markdown table, plot.
# ----------------------------------------------------------------------------


def _loadavg():
  try:
    return [round(float(x), 2) for x in os.getloadavg()]
  except OSError:
    return None


def run(cfg, lr, timing=True, quiet=False):
  t_start = time.perf_counter()
  import flax
  data = load_text()
  optimizers = make_optimizers(lr)
  meta = {
      "date_utc": datetime.datetime.now(datetime.UTC).isoformat(
          timespec="seconds"),
      "jax": jax.__version__, "optax": optax.__version__,
      "flax": flax.__version__, "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "cpu_count": os.cpu_count(), "platform": platform.platform(),
      "loadavg_start": _loadavg(),
      "note": "shared 2-core CPU, other jobs running (see loadavg)",
  }
  # Timing first: it is short, and a failure there costs no training run.
  timing_res = measure_timing(cfg, data, optimizers, quiet) if timing else None
  t_train = time.perf_counter()
  results = train_all(cfg, data, optimizers, quiet)
  t_train = time.perf_counter() - t_train
  meta["loadavg_end"] = _loadavg()
  scanned, _ = make_models(cfg, len(data[2]))
  n_params = sum(x.size for x in jax.tree.leaves(
      jax.eval_shape(lambda: init_params(scanned, 0, cfg))))
  return {
      "benchmark": "scanned_lm",
      "config": dict(cfg, learning_rates=dict(LR, **(lr or {})),
                     optimizers=list(optimizers), stack_key=STACK,
                     n_params=int(n_params), vocab=len(data[2]),
                     n_train_chars=len(data[0]), n_val_chars=len(data[1]),
                     machine=_common.machine_info(),
                     data="pydoc_data.topics (CPython help texts), values "
                     "joined in sorted key order; last 10% of characters "
                     "is the validation split",
                     model="char transformer LM, pre-LN, causal attention, "
                     "learned positions, GELU MLP 4x, blocks nn.scan-ned "
                     f"under '{STACK}'"),
      "machine": meta,
      "steps": list(range(cfg["eval_every"], cfg["steps"] + 1,
                         cfg["eval_every"])),
      "results": results,
      "timing": timing_res,
      "train_s": t_train,
      "elapsed_s": time.perf_counter() - t_start,
  }


def _ratio_cell(r):
  return f"{r['median']:.2f} [{r['q25']:.2f}, {r['q75']:.2f}]"


def markdown_table(payload):
  cfg = payload["config"]
  m = payload["machine"]
  lines = [
      f"Character LM on pydoc topics: {cfg['layers']} scanned blocks, d_model"
      f" {cfg['d_model']}, {cfg['heads']} heads, context {cfg['context']},"
      f" batch {cfg['batch']}, {cfg['steps']} steps; loss in nats per"
      f" character, mean ± std over {cfg['seeds']} seeds (final losses on"
      f" the same {cfg['eval_batches'] * cfg['batch']} fixed windows per split"
      " throughout).",
      "",
      "| optimizer | lr | final train loss | final val loss |",
      "|---|---:|---:|---:|",
  ]
  for name, r in payload["results"].items():
    lr = cfg["learning_rates"]["adam" if name == "adam" else "adam_ng"]
    lines.append(
        f"| {name} | {lr:g} | {r['final_train_loss_mean']:.3f} ±"
        f" {r['final_train_loss_std']:.3f} | {r['final_val_loss_mean']:.3f} ±"
        f" {r['final_val_loss_std']:.3f} |")
  ref = payload["results"].get("adam_ng(stacked)")
  if ref is not None:
    lines += ["", "Paired final differences (same initial weights and batches"
              " per seed), minus adam_ng(stacked):"]
    for name, r in payload["results"].items():
      if r is ref:
        continue
      cells = []
      for key in ("final_train_loss", "final_val_loss"):
        d = np.asarray(r[key]) - np.asarray(ref[key])
        d_mean, d_std = _common.mean_std(d)
        cells.append(f"{key[6:]} {d_mean:+.3f} ± {d_std:.3f} (per seed"
                     f" {', '.join(f'{x:+.3f}' for x in d)})")
      lines.append(f"- {name}: " + "; ".join(cells) + ".")
  t = payload["timing"]
  if t:
    lines += [
        "",
        "Train step (loss, grad, update, apply), median ratio [quartiles]"
        " over interleaved repetitions in one run:",
        "",
        "| ratio | optimizer | compile time | step time |",
        "|---|---|---:|---:|",
    ]
    for o, r in t["scanned_over_unrolled"].items():
      lines.append(f"| scanned / unrolled | {o} | {_ratio_cell(r['compile'])}"
                   f" | {_ratio_cell(r['step'])} |")
    for mdl in ("scanned", "unrolled"):
      r = t["ng_over_adam"].get(mdl)
      if r:
        lines.append(
            f"| adam_ng(stacked) / adam, {mdl} | | {_ratio_cell(r['compile'])}"
            f" | {_ratio_cell(r['step'])} |")
    for n, r in t["ng_over_adam"].get("update_only", {}).items():
      lines.append(f"| {n} / adam, update alone (scanned params) |"
                   f" | {_ratio_cell(r['compile'])} | |")
    lines += ["", "Medians: " + ", ".join(
        f"{k} compile {v:.1f} s, step {t['step_ms_median'][k]:.0f} ms"
        for k, v in t["compile_s_median"].items()) + "; update alone: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in
                          t["update_compile_s_median"].items()) + "."]
  lines += ["", f"{m['note']}: {m['cpu_count']} cores, {m['platform']}, jax"
            f" {m['jax']}; load average {m['loadavg_start']} at start,"
            f" {m['loadavg_end']} at end; {payload['elapsed_s']:.0f} s in all."]
  return "\n".join(lines) + "\n"


COLORS = {"adam": "tab:blue", "adam_ng(stacked)": "tab:red",
          "adam_ng": "tab:orange"}


def plot(payload):
  """The figure: loss curves, per-layer motion and paired differences."""
  import matplotlib.pyplot as plt

  cfg = payload["config"]
  steps = np.asarray(payload["steps"])
  fig, axes = plt.subplots(1, 4, figsize=(18, 4))
  ref = payload["results"].get("adam_ng(stacked)")
  for name, r in payload["results"].items():
    color = COLORS.get(name, "k")
    for ax, key in ((axes[0], "train_loss"), (axes[1], "val_loss")):
      mean, std = _common.mean_std(r[key], axis=0)
      ax.plot(steps, mean, color=color, label=name)
      ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    ch = np.asarray(r["layer_change_norm"])
    layers = np.arange(ch.shape[1])
    ch_mean, ch_std = _common.mean_std(ch, axis=0)
    axes[2].errorbar(layers, ch_mean, yerr=ch_std, color=color,
                     marker="o", ms=3, capsize=2, label=name)
    if ref is not None and r is not ref:
      # Paired over seeds: same initial weights and batches.
      d = np.asarray(r["val_loss"]) - np.asarray(ref["val_loss"])
      mean, std = _common.mean_std(d, axis=0)
      axes[3].plot(steps, mean, color=color, label=f"{name} − stacked")
      axes[3].fill_between(steps, mean - std, mean + std, color=color,
                           alpha=0.2)
  for ax, title in ((axes[0], "train loss (fixed windows)"),
                    (axes[1], "validation loss")):
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title(title)
    lo = min(np.asarray(r["val_loss"]).mean(0).min()
             for r in payload["results"].values())
    ax.set_ylim(max(0.0, lo - 0.2), lo + 1.5)
    ax.legend(fontsize=8)
  axes[2].set_xlabel(f"layer (slice of the '{STACK}' stack)")
  axes[2].set_ylabel("‖θ_l(end) − θ_l(0)‖")
  axes[2].set_title("how far each layer moved")
  axes[2].legend(fontsize=8)
  axes[3].axhline(0.0, color="gray", lw=0.5)
  axes[3].set_xlabel("step")
  axes[3].set_ylabel("Δ validation loss (nats / char)")
  axes[3].set_title("paired difference to adam_ng(stacked)")
  axes[3].legend(fontsize=8)
  fig.suptitle(
      f"Char LM, {cfg['layers']} scanned blocks (d {cfg['d_model']}): mean ±"
      f" std over {cfg['seeds']} seeds")
  return fig


def main(argv=None):
  parser = _common.make_parser(__doc__)
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--seeds", type=int, default=None)
  parser.add_argument("--lr-adam", type=float, default=None)
  parser.add_argument("--lr-ng", type=float, default=None)
  parser.add_argument("--no-timing", action="store_true",
                      help="skip the compile/step-time measurement")
  args = parser.parse_args(argv)
  partial = bool(args.steps or args.seeds or args.lr_adam or args.lr_ng
                 or args.no_timing)
  out = _common.output_dir(parser, args, "scanned_lm", partial)
  cfg = dict(QUICK if args.quick else FULL)
  if args.steps:
    cfg["steps"] = args.steps
  if args.seeds:
    cfg["seeds"] = args.seeds
  lr = {}
  if args.lr_adam:
    lr["adam"] = args.lr_adam
  if args.lr_ng:
    lr["adam_ng"] = args.lr_ng
  with _common.timed_compiles():  # its compile-time ratio
    payload = run(cfg, lr, timing=not args.no_timing, quiet=args.quiet)
  payload["quick"] = args.quick
  write(out, payload)
  return 0


def write(out, payload):
  """The JSON, the markdown table and the plot, through the shared writer."""
  table = markdown_table(payload)
  _common.write_results(out, "scanned_lm", payload,
                        "# Scanned layers: char LM\n\n" + table,
                        {"scanned_lm.png": plot})
  print(table)


if __name__ == "__main__":
  sys.exit(main())

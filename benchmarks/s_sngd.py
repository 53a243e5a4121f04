"""S-SNGD (Zhao, Xie & Li 2021, §6) in small: stagewise vs constant SNGD on digits.

The paper's claims: SNGD (``w <- w - α g/||g||``, global norm) needs a small
constant step size α to converge, which makes it slow; a large constant α
trains fast at first and then stalls at a loss floor set by α, because every
step has length exactly α. Stagewise SNGD (S-SNGD, Algorithm 2) starts with a
large α and lowers it by stages, and beats SNGD in training loss and test
accuracy.

This script trains an MLP and a small CNN on ``sklearn.datasets.load_digits``
(75/25 stratified split, standardized inputs) at one large batch (256 of
the 1347 training images), several seeds (vmapped), minimizing cross-entropy
plus an L2 penalty ``1e-3/2 ||W||²`` on the kernels (the "training loss"
below is this objective), with

  * ``SNGD small``:  ``normopt.sngd(α_small)``,
  * ``SNGD large``:  ``normopt.sngd(α_large)``,
  * ``S-SNGD multistep``: ``normopt.sngd`` with α_large, x0.1 at 50% and 75%
    of the steps,
  * ``S-SNGD poly``: α_t = α_large (1 - t/T)^1.1 (poly-power, r = 1.1),
  * ``S-SNGD stagewise``: ``normopt.s_sngd`` (``stagewise_schedule``) with
    α_t = α_large / 3^t, t = 0..3, stage lengths M_t = S/α_t (Algorithm 2),
    S chosen so that the four stages fill the run (2.5%, 7.5%, 22.5% and
    67.5% of the steps),
  * ``SGD stagewise``: plain SGD at the same large batch, η x0.1 at 50% and
    75% of the steps,

and writes training-loss and test-accuracy curves (PNG), the numbers (JSON)
and a markdown table to ``benchmarks/results/``.

Run from the repository root::

  python benchmarks/s_sngd.py            # full run
  python benchmarks/s_sngd.py --quick --out /tmp/s_sngd   # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import normopt

FULL = dict(models=("mlp", "cnn"), steps=1000, eval_every=50, seeds=3,
            batch=256)
QUICK = dict(models=("mlp",), steps=30, eval_every=15, seeds=2, batch=128)

# Step sizes, per model: SNGD's α is the length of every step in parameter
# space (global norm); SGD's η multiplies the raw gradient.
ALPHA_SMALL = 0.02
ALPHA_LARGE = 1.0
SGD_LR = 1.0
POLY_POWER = 1.1
# L2 regularization in the training objective (as in the paper's CIFAR
# runs): without it digits is separable, the loss of every method goes to 0
# and no step-size floor can show.
WEIGHT_DECAY = 1e-3
STAGE_RATES = tuple(ALPHA_LARGE / 3**t for t in range(4))


def schedules(steps):
  """name -> step-size schedule (``count -> α``) for a run of ``steps`` steps."""
  multistep = lambda lr: optax.piecewise_constant_schedule(
      lr, {steps // 2: 0.1, (3 * steps) // 4: 0.1})
  # Algorithm 2: stage t lasts M_t = ceil(S/α_t); pick S so Σ M_t ≈ steps.
  stage_length = steps / sum(1.0 / a for a in STAGE_RATES)
  return {
      "SNGD small": optax.constant_schedule(ALPHA_SMALL),
      "SNGD large": optax.constant_schedule(ALPHA_LARGE),
      "S-SNGD multistep": multistep(ALPHA_LARGE),
      "S-SNGD poly": optax.polynomial_schedule(
          ALPHA_LARGE, 0.0, POLY_POWER, steps),
      "S-SNGD stagewise": normopt.stagewise_schedule(STAGE_RATES, stage_length),
      "SGD stagewise": multistep(SGD_LR),
  }


def methods(steps):
  """name -> optimizer: SNGD with each schedule, and plain SGD."""
  sched = schedules(steps)
  opts = {name: normopt.sngd(sched[name]) for name in sched if "SNGD" in name}
  opts["S-SNGD stagewise"] = normopt.s_sngd(
      STAGE_RATES, steps / sum(1.0 / a for a in STAGE_RATES))
  opts["SGD stagewise"] = optax.sgd(sched["SGD stagewise"])
  return opts


def load_data():
  """Digits, 75/25 stratified split, inputs standardized on the train set."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  from sklearn.preprocessing import StandardScaler

  x, y = load_digits(return_X_y=True)
  xtr, xte, ytr, yte = train_test_split(
      x, y, test_size=0.25, stratify=y, random_state=0)
  scaler = StandardScaler().fit(xtr)
  f32 = lambda a: jnp.asarray(scaler.transform(a), jnp.float32)
  return f32(xtr), jnp.asarray(ytr), f32(xte), jnp.asarray(yte)


def _dense(rng, n_in, n_out):
  std = math.sqrt(2.0 / n_in)  # He-normal for ReLU
  return {"kernel": (std * rng.standard_normal((n_in, n_out))).astype(
      np.float32), "bias": np.zeros((n_out,), np.float32)}


def _conv(rng, k, c_in, c_out):
  std = math.sqrt(2.0 / (k * k * c_in))
  return {"kernel": (std * rng.standard_normal((k, k, c_in, c_out))).astype(
      np.float32), "bias": np.zeros((c_out,), np.float32)}


def init_model(kind, rng):
  """He-normal kernels, zero biases, from a NumPy ``Generator``."""
  if kind == "mlp":  # 64 -> 128 -> 128 -> 10, ReLU
    return {"dense_0": _dense(rng, 64, 128), "dense_1": _dense(rng, 128, 128),
            "dense_2": _dense(rng, 128, 10)}
  # CNN: 8x8x1 -> conv3x3(8) -> conv3x3/2(16) -> dense(10)
  return {"conv_0": _conv(rng, 3, 1, 8), "conv_1": _conv(rng, 3, 8, 16),
          "dense_2": _dense(rng, 4 * 4 * 16, 10)}


def _conv_apply(p, x, stride):
  y = jax.lax.conv_general_dilated(
      x, p["kernel"], (stride, stride), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y + p["bias"])


def apply_model(kind, params, x):
  if kind == "mlp":
    x = jax.nn.relu(x @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
    x = jax.nn.relu(x @ params["dense_1"]["kernel"] + params["dense_1"]["bias"])
  else:
    x = x.reshape(-1, 8, 8, 1)
    x = _conv_apply(params["conv_0"], x, 1)
    x = _conv_apply(params["conv_1"], x, 2).reshape(x.shape[0], -1)
  return x @ params["dense_2"]["kernel"] + params["dense_2"]["bias"]


def make_run(kind, tx, data, steps, eval_every, batch):
  """jit(vmap over seeds) of one training run; returns the curves."""
  xtr, ytr, xte, yte = data
  n = xtr.shape[0]
  n_evals = steps // eval_every
  n_epochs = math.ceil(steps * batch / n)

  def metrics(params, x, y):
    """Objective (cross-entropy + L2 on kernels) and accuracy."""
    logits = apply_model(kind, params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    l2 = sum(jnp.sum(p["kernel"] ** 2) for p in params.values())
    return loss + 0.5 * WEIGHT_DECAY * l2, jnp.mean(jnp.argmax(logits, -1) == y)

  def evaluate(params):
    return jnp.stack([*metrics(params, xtr, ytr), *metrics(params, xte, yte)])

  def one_seed(params, idx):
    def step(carry, b):
      params, state = carry
      grads = jax.grad(lambda p: metrics(p, xtr[b], ytr[b])[0])(params)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    def chunk(carry, idx_chunk):
      carry, _ = jax.lax.scan(step, carry, idx_chunk)
      return carry, evaluate(carry[0])

    _, curve = jax.lax.scan(chunk, (params, tx.init(params)), idx)
    return jnp.concatenate([evaluate(params)[None], curve])  # (n_evals+1, 4)

  train = jax.jit(jax.vmap(one_seed))

  def run_seeds(seeds):
    # Initial parameters and batch order come from NumPy, outside the jitted
    # function: random permutations inside jit dominate compile time on CPU.
    inits, orders = [], []
    for seed in seeds:
      rng = np.random.default_rng(seed)
      inits.append(init_model(kind, rng))
      order = np.concatenate([rng.permutation(n) for _ in range(n_epochs)])
      orders.append(order[: steps * batch].reshape(n_evals, eval_every, batch))
    params = jax.tree.map(lambda *a: jnp.stack(a), *inits)
    return train(params, jnp.asarray(np.stack(orders), jnp.int32))

  return run_seeds


def run(cfg, out_dir, quiet=False):
  from tqdm import tqdm

  data = load_data()
  seeds = list(range(cfg["seeds"]))
  opts = methods(cfg["steps"])
  jobs = [(m, name) for m in cfg["models"] for name in opts]
  results = {}
  t0 = time.time()
  for kind, name in tqdm(jobs, desc="s_sngd", disable=quiet):
    fn = make_run(kind, opts[name], data, cfg["steps"], cfg["eval_every"],
                  cfg["batch"])
    curves = np.asarray(fn(seeds), np.float64)  # (seeds, evals, 4)
    results.setdefault(kind, {})[name] = {
        "train_loss": curves[:, :, 0].tolist(),
        "train_acc": curves[:, :, 1].tolist(),
        "test_loss": curves[:, :, 2].tolist(),
        "test_acc": curves[:, :, 3].tolist(),
    }
  stage_length = cfg["steps"] / sum(1.0 / a for a in STAGE_RATES)
  payload = {
      "benchmark": "s_sngd",
      "config": dict(
          cfg, models=list(cfg["models"]), alpha_small=ALPHA_SMALL,
          alpha_large=ALPHA_LARGE, sgd_lr=SGD_LR, poly_power=POLY_POWER,
          weight_decay=WEIGHT_DECAY,
          stage_rates=list(STAGE_RATES), stage_length=stage_length,
          stage_boundaries=normopt.schedules.stage_boundaries(
              STAGE_RATES, stage_length),
          multistep_boundaries=[cfg["steps"] // 2, (3 * cfg["steps"]) // 4],
          methods=list(opts),
          data="sklearn load_digits, 75/25 stratified split (random_state=0),"
          " standardized"),
      "steps": list(range(0, cfg["steps"] + 1, cfg["eval_every"])),
      "results": results,
      "elapsed_s": time.time() - t0,
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "s_sngd.json"), "w") as f:
    json.dump(payload, f, indent=1)
  table = markdown_table(payload)
  with open(os.path.join(out_dir, "s_sngd.md"), "w") as f:
    f.write(table)
  plot(payload, os.path.join(out_dir, "s_sngd.png"))
  return payload, table


def _final(res, key):
  v = np.asarray(res[key])[:, -1]
  return f"{v.mean():.4f} ± {v.std():.4f}"


def markdown_table(payload):
  cfg = payload["config"]
  lines = [
      f"After {cfg['steps']} steps at batch {cfg['batch']}, mean ± std over"
      f" {cfg['seeds']} seeds (digits). α_small={cfg['alpha_small']},"
      f" α_large={cfg['alpha_large']}, SGD η={cfg['sgd_lr']}; train loss ="
      f" cross-entropy + {cfg['weight_decay']:g}/2·‖W‖².",
      "",
      "| model | method | final train loss | final test acc | best test acc |",
      "|---|---|---:|---:|---:|",
  ]
  for kind, per in payload["results"].items():
    for name, res in per.items():
      best = np.asarray(res["test_acc"]).max(1)
      lines.append(
          f"| {kind} | {name} | {_final(res, 'train_loss')} |"
          f" {_final(res, 'test_acc')} | {best.mean():.4f} |")
  return "\n".join(lines) + "\n"


def plot(payload, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kinds = list(payload["results"])
  steps = payload["steps"]
  fig, axes = plt.subplots(2, len(kinds), squeeze=False,
                           figsize=(5.5 * len(kinds), 7), sharex=True)
  for col, kind in enumerate(kinds):
    for name, res in payload["results"][kind].items():
      ls = "--" if name.startswith("SGD") else "-"
      for row, key in enumerate(("train_loss", "test_acc")):
        axes[row][col].plot(steps, np.asarray(res[key]).mean(0), ls=ls,
                            label=name)
    axes[0][col].set_yscale("log")
    axes[0][col].set_title(f"{kind}: training loss")
    axes[1][col].set_title(f"{kind}: test accuracy")
    axes[1][col].set_ylim(0.8, 1.0)
    axes[1][col].set_xlabel("step")
    axes[0][col].legend(fontsize=7)
  fig.suptitle("SNGD (constant α) vs S-SNGD schedules vs stagewise SGD,"
               f" batch {payload['config']['batch']}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny run (seconds) for tests")
  parser.add_argument("--out", default=None,
                      help="output folder (default benchmarks/results; "
                      "required with --quick)")
  args = parser.parse_args(argv)
  cfg = dict(QUICK if args.quick else FULL)
  if args.quick and args.out is None:
    parser.error("--quick needs --out (never overwrite the full results)")
  out = args.out or os.path.join(os.path.dirname(__file__), "results")
  payload, table = run(cfg, out)
  print(table)
  print(f"wrote {out}/s_sngd.{{json,md,png}} in {payload['elapsed_s']:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())

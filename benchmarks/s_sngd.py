"""S-SNGD (Zhao, Xie & Li 2021, §6) in small: stagewise vs constant SNGD on digits.

The paper's claims: SNGD (``w <- w - α g/||g||``, global norm) needs a small
constant step size α to converge, which makes it slow; a large constant α
trains fast at first and then stalls at a loss floor set by α, because every
step has length exactly α. Stagewise SNGD (S-SNGD, Algorithm 2) starts with a
large α and lowers it by stages, and beats SNGD in training loss and test
accuracy.

This script trains an MLP and a small CNN on ``sklearn.datasets.load_digits``
(the benchmarks' one split: stratified 80/20, standardized; see
``_common.load_digits``) at one large batch (256 of the 1437 training
images), several seeds (vmapped), minimizing cross-entropy
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
  python benchmarks/s_sngd.py --quick    # seconds, into a temp folder
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import _common
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


def metrics(kind, params, x, y):
  """Objective (cross-entropy + L2 on kernels) and accuracy."""
  logits = apply_model(kind, params, x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  l2 = sum(jnp.sum(p["kernel"] ** 2) for p in params.values())
  return loss + 0.5 * WEIGHT_DECAY * l2, jnp.mean(jnp.argmax(logits, -1) == y)


def run(cfg, quiet=False):
  data = _common.load_digits()
  seeds = list(range(cfg["seeds"]))
  opts = methods(cfg["steps"])
  jobs = [(m, name) for m in cfg["models"] for name in opts]
  results = {}
  t0 = time.time()
  for kind, name in tqdm(jobs, desc="s_sngd", disable=quiet):
    fn = _common.make_vmapped_run(
        opts[name], functools.partial(init_model, kind),
        lambda p, x, y, kind=kind: metrics(kind, p, x, y)[0],
        functools.partial(metrics, kind), data, cfg["steps"],
        cfg["eval_every"], cfg["batch"])
    results.setdefault(kind, {})[name] = _common.curves_dict(fn(seeds))
  stage_length = cfg["steps"] / sum(1.0 / a for a in STAGE_RATES)
  return {
      "benchmark": "s_sngd",
      "config": dict(
          cfg, models=list(cfg["models"]), alpha_small=ALPHA_SMALL,
          alpha_large=ALPHA_LARGE, sgd_lr=SGD_LR, poly_power=POLY_POWER,
          weight_decay=WEIGHT_DECAY,
          stage_rates=list(STAGE_RATES), stage_length=stage_length,
          stage_boundaries=normopt.schedules.stage_boundaries(
              STAGE_RATES, stage_length),
          multistep_boundaries=[cfg["steps"] // 2, (3 * cfg["steps"]) // 4],
          methods=list(opts), data=_common.DIGITS_CONVENTION,
          n_train=int(data.x_train.shape[0]), n_test=int(data.x_test.shape[0]),
          machine=_common.machine_info()),
      "steps": list(range(0, cfg["steps"] + 1, cfg["eval_every"])),
      "results": results,
      "elapsed_s": time.time() - t0,
  }


def _final(res, key):
  m, s = _common.mean_std(np.asarray(res[key])[:, -1])
  return f"{m:.4f} ± {s:.4f}"


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


def plot(payload):
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
  return fig


def main(argv=None):
  parser = _common.make_parser(__doc__)
  args = parser.parse_args(argv)
  out = _common.output_dir(parser, args, "s_sngd")
  payload = run(dict(QUICK if args.quick else FULL), args.quiet)
  table = markdown_table(payload)
  _common.write_results(out, "s_sngd", payload, table, {"s_sngd.png": plot})
  print(table)
  print(f"{payload['elapsed_s']:.0f} s")
  return payload


if __name__ == "__main__":
  main()

"""S-SNGD (Zhao, Xie & Li 2021, §6) in small: stagewise vs constant SNGD on digits.

The paper's claims: SNGD (``w <- w - α g/||g||``, global norm) needs a small
constant step size α to converge, which makes it slow; a large constant α
trains fast at first and then stalls at a loss floor set by α, because every
step has length exactly α. Stagewise SNGD (S-SNGD, Algorithm 2) starts with a
large α and lowers it by stages, and "achieves better performance than SNGD
in terms of both training loss and test accuracy" (abstract).

This script trains an MLP and a small CNN on ``sklearn.datasets.load_digits``
(the benchmarks' one split: stratified 80/20, standardized; see
``_common.load_digits``) at one large batch (256 of the 1437 training
images), minimizing cross-entropy plus an L2 penalty ``1e-3/2 ||W||²`` on the
kernels (the "training loss" below is this objective), with

  * ``SNGD``: ``normopt.sngd(α)``, constant α;
  * ``S-SNGD multistep``: ``normopt.sngd`` with α_0, x0.1 at 50% and 75% of
    the steps;
  * ``S-SNGD poly``: α_t = α_0 (1 - t/T)^1.1 (poly-power, r = 1.1);
  * ``S-SNGD stagewise``: Algorithm 2 (``normopt.stagewise_schedule``):
    α_t = α_0 / 3^t, t = 0..3, stage lengths M_t = S/α_t with S = α_0 T /
    (1 + 3 + 9 + 27), so the four stages fill the run (2.5%, 7.5%, 22.5% and
    67.5% of the steps) whatever α_0;
  * ``SGD stagewise``: plain SGD at the same large batch, η x0.1 at 50% and
    75% of the steps.

Every method is tuned (``_common.TUNING_RULE``): its step size (α, α_0 or η)
on a log grid, two selection seeds on a validation split of the training
set, lowest final validation objective wins; then five fresh seeds at the
chosen step size train on the whole training set and are reported on the
test set. Each schedule keeps its shape as a function of the (traced) step
size, so a whole grid trains in one compiled ``jit(vmap)``. The claims are
judged by ``_common.VERDICT_RULE`` on paired seeds.

Writes training-loss and test-accuracy curves (PNG), the numbers (JSON) and a
markdown table to ``benchmarks/results/``. Run from the repository root::

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

FULL = dict(models=("mlp", "cnn"), steps=1000, eval_every=50, batch=256)
QUICK = dict(models=("mlp",), steps=30, eval_every=15, batch=128)

POLY_POWER = 1.1
# L2 regularization in the training objective (as in the paper's CIFAR
# runs): without it digits is separable, the loss of every method goes to 0
# and no step-size floor can show.
WEIGHT_DECAY = 1e-3
# Algorithm 2's stage step sizes relative to α_0: α_t = α_0 / 3^t.
STAGE_SHAPE = tuple(1.0 / 3**t for t in range(4))

METHODS = ("SNGD", "S-SNGD multistep", "S-SNGD poly", "S-SNGD stagewise",
           "SGD stagewise")
SCHEDULES = ("multistep", "poly", "stagewise")  # the S-SNGD variants
# Centres of the step-size grids (α for SNGD, α_0 for S-SNGD, η for SGD);
# the old untuned run used α = 0.02 and 1.0 (constant), α_0 = 1.0, η = 1.0.
GRID_CENTERS = {"SNGD": 0.1, "S-SNGD multistep": 1.0, "S-SNGD poly": 1.0,
                "S-SNGD stagewise": 1.0, "SGD stagewise": 1.0}

PAPER_SNGD = ("abstract: S-SNGD achieves better performance than SNGD in terms "
              "of both training loss and test accuracy (deep networks, §6; no "
              "number reproduced here)")
PAPER_SGD = ("qualitative: S-SNGD's large initial normalized step suits large "
             "batches; no number of the paper reproduced here")


def stage_length(steps, alpha0=1.0):
  """Algorithm 2's ``S`` for rates ``α_0 STAGE_SHAPE``: Σ_t S/α_t = ``steps``."""
  return alpha0 * steps / sum(1.0 / r for r in STAGE_SHAPE)


def multistep_boundaries(steps):
  return [steps // 2, (3 * steps) // 4]


def schedules(steps):
  """name -> ``lr -> schedule`` (``count -> step size``), for ``steps`` steps.

  ``lr`` (α, α_0 or η) may be a traced scalar: each schedule's shape is fixed
  and scales with it. For the stagewise schedule the stage lengths M_t =
  S/α_t do not change with α_0 because S scales with α_0 (S/α_0 fixed).
  """
  bounds = multistep_boundaries(steps)
  multistep = lambda lr: optax.piecewise_constant_schedule(
      lr, {b: 0.1 for b in bounds})
  unit_stages = normopt.stagewise_schedule(STAGE_SHAPE, stage_length(steps))
  return {
      "SNGD": optax.constant_schedule,
      "S-SNGD multistep": multistep,
      "S-SNGD poly": lambda lr: optax.polynomial_schedule(
          lr, 0.0, POLY_POWER, steps),
      "S-SNGD stagewise": lambda lr: (lambda count: lr * unit_stages(count)),
      "SGD stagewise": multistep,
  }


def methods(steps):
  """name -> ``lr -> optimizer``: SNGD with each schedule, and plain SGD."""
  sched = schedules(steps)
  factory = lambda name: (
      (lambda lr: optax.sgd(sched[name](lr))) if name.startswith("SGD")
      else (lambda lr: normopt.sngd(sched[name](lr))))
  return {name: factory(name) for name in METHODS}


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
  """3x3 conv, "SAME" padding as XLA pads it, then ReLU, as im2col + matmul.

  The same numbers as ``lax.conv_general_dilated(..., "SAME")`` (to float32
  rounding; checked in the tests), about 3.5x faster here: XLA:CPU runs
  these tiny vmapped convolutions far slower than the equivalent matmul.
  """
  k = p["kernel"]
  kh, kw, c_in, c_out = k.shape
  pads, outs = [], []
  for n, kk in ((x.shape[1], kh), (x.shape[2], kw)):
    out = -(-n // stride)
    total = max((out - 1) * stride + kk - n, 0)
    pads.append((total // 2, total - total // 2))
    outs.append(out)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  cols = [xp[:, i:i + stride * (outs[0] - 1) + 1:stride,
             j:j + stride * (outs[1] - 1) + 1:stride, :]
          for i in range(kh) for j in range(kw)]
  y = jnp.concatenate(cols, -1) @ k.reshape(kh * kw * c_in, c_out)
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


def _runner(kind, factory, data, cfg):
  return _common.make_vmapped_run(
      factory, functools.partial(init_model, kind),
      lambda p, x, y: metrics(kind, p, x, y)[0],
      functools.partial(metrics, kind), data, cfg["steps"],
      cfg["eval_every"], cfg["batch"])


def tune_and_run(kind, name, factory, select_data, final_data, cfg):
  """Tuning record (+ selection curves) and the final-seed curves of one method.

  One compiled program per phase: the whole grid x selection seeds in one
  call (a widening step is one more call), then [chosen] x final seeds.
  """
  select = _runner(kind, factory, select_data, cfg)
  curves = {}

  def evaluate(lrs, seeds):
    out = select(seeds, lrs)  # (lrs, seeds, evals, 4)
    for lr, c in zip(lrs, out, strict=True):
      curves[float(lr)] = c
    return out[:, :, -1, 2]  # final validation objective

  record = _common.tune_lr(evaluate, _common.log_grid(GRID_CENTERS[name]))
  record["final_seeds"] = list(_common.FINAL_SEEDS)
  record.update(model=kind, method=name)
  final = _runner(kind, factory, final_data, cfg)(
      list(_common.FINAL_SEEDS), [record["chosen"]])[0]
  selection = {f"{lr:g}": _common.curves_dict(curves[lr]) for lr in record["grid"]}
  return record, selection, final


def final_values(curves):
  """Per-seed values at the last evaluation: train loss, test loss, test acc."""
  last = np.asarray(curves)[:, -1]
  return {"train_loss": last[:, 0].tolist(), "train_acc": last[:, 1].tolist(),
          "test_loss": last[:, 2].tolist(), "test_acc": last[:, 3].tolist()}


def make_claims(finals, models):
  """Per model and S-SNGD schedule: vs SNGD and vs SGD, train loss and test acc."""
  out = []
  for kind in models:
    f = finals[kind]
    for sched in SCHEDULES:
      a = f[f"S-SNGD {sched}"]
      for base, paper in (("SNGD", PAPER_SNGD), ("SGD stagewise", PAPER_SGD)):
        b = f[base]
        what = ("beats SNGD (constant α)" if base == "SNGD"
                else "beats stagewise SGD at large batch")
        out.append(_common.claim(
            f"S-SNGD ({sched}) {what}: training loss", a["train_loss"],
            b["train_loss"], metric="final training loss (CE + L2)",
            paper=paper, group=kind, schedule=sched, baseline=base))
        out.append(_common.claim(
            f"S-SNGD ({sched}) {what}: test accuracy", a["test_acc"],
            b["test_acc"], lower_is_better=False, metric="final test accuracy",
            paper=paper, group=kind, schedule=sched, baseline=base))
  return out


def run(cfg, quiet=False):
  data, select_data = _common.tuning_data()
  opts = methods(cfg["steps"])
  jobs = [(m, name) for m in cfg["models"] for name in METHODS]
  tuning, selection, results, finals = {}, {}, {}, {}
  t0 = time.time()
  for kind, name in tqdm(jobs, desc="s_sngd", disable=quiet):
    record, sel, final = tune_and_run(kind, name, opts[name], select_data,
                                      data, cfg)
    tuning[f"{kind}/{name}"] = record
    selection[f"{kind}/{name}"] = sel
    results.setdefault(kind, {})[name] = _common.curves_dict(final)
    finals.setdefault(kind, {})[name] = final_values(final)
  steps = cfg["steps"]
  return {
      "benchmark": "s_sngd",
      "config": dict(
          cfg, models=list(cfg["models"]), poly_power=POLY_POWER,
          weight_decay=WEIGHT_DECAY, stage_shape=list(STAGE_SHAPE),
          stage_length_per_alpha0=stage_length(steps),
          stage_boundaries=normopt.schedules.stage_boundaries(
              STAGE_SHAPE, stage_length(steps)),
          multistep_boundaries=multistep_boundaries(steps),
          grid_centers=dict(GRID_CENTERS), methods=list(METHODS),
          selection_metric="final validation objective (CE + L2)",
          select_seeds=list(_common.SELECT_SEEDS),
          final_seeds=list(_common.FINAL_SEEDS),
          tuning_rule=_common.TUNING_RULE, verdict_rule=_common.VERDICT_RULE,
          data=_common.DIGITS_CONVENTION,
          n_train=int(data.x_train.shape[0]), n_test=int(data.x_test.shape[0]),
          n_select_train=int(select_data.x_train.shape[0]),
          n_val=int(select_data.x_test.shape[0]),
          machine=_common.machine_info()),
      "steps": list(range(0, steps + 1, cfg["eval_every"])),
      "tuning": tuning,
      "selection_curves": selection,
      "results": results,
      "final": finals,
      "claims": make_claims(finals, cfg["models"]),
      "elapsed_s": time.time() - t0,
  }


def _ms(values, scale=1.0, digits=4):
  m, s = _common.mean_std(np.asarray(values) * scale)
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(payload):
  cfg = payload["config"]
  lines = [
      f"{cfg['steps']} steps at batch {cfg['batch']} for every method (digits);"
      f" train loss = cross-entropy + {cfg['weight_decay']:g}/2·‖W‖²."
      f" Step size (SNGD: α; S-SNGD: α_0; SGD: η) tuned per method and model"
      f" on a validation split ({cfg['n_select_train']} / {cfg['n_val']}"
      f" images, seeds {cfg['select_seeds']}, by {cfg['selection_metric']});"
      f" reported: {len(cfg['final_seeds'])} fresh seeds {cfg['final_seeds']}"
      f" on the whole training set, mean ± std.",
      "",
      "S-SNGD stagewise is Algorithm 2 with α_t = α_0/3^t and M_t = S/α_t;"
      " S is tied to α_0 (S = α_0 T/40), so the stage structure (stages start"
      f" at steps {cfg['stage_boundaries']}) is the same for every α_0 and"
      " tuning α_0 tunes S with it. Multistep: x0.1 at steps"
      f" {cfg['multistep_boundaries']}; poly: α_0(1 − t/T)^{cfg['poly_power']}.",
      "",
      "| model | method | chosen | grid | interior | final train loss |"
      " final test acc (%) |",
      "|---|---|---:|---|:-:|---:|---:|",
  ]
  for kind, per in payload["final"].items():
    for name, f in per.items():
      rec = payload["tuning"][f"{kind}/{name}"]
      lines.append(
          f"| {kind} | {name} | {rec['chosen']:g} |"
          f" {rec['grid'][0]:g} … {rec['grid'][-1]:g} ({len(rec['grid'])}) |"
          f" {'yes' if rec['interior'] else 'no'} | {_ms(f['train_loss'])} |"
          f" {_ms(f['test_acc'], 100, 2)} |")
  lines += ["", "Mean final validation objective over the selection seeds"
            " (∞: diverged), per grid value:", ""]
  for key, rec in payload["tuning"].items():
    vals = ", ".join(
        f"{lr:g}: {'∞' if v is None else f'{v:.4g}'}"
        for lr, v in zip(rec["grid"], rec["mean_val_loss"], strict=True))
    lines.append(f"- {key}: {vals}")
  lines += ["", "SNGD's constant-α grid shows the paper's two points about SNGD"
            " (bottom panels of the figure; selection runs, mean final"
            " training objective):", ""]
  for kind in cfg["models"]:
    rec = payload["tuning"][f"{kind}/SNGD"]
    sel = payload["selection_curves"][f"{kind}/SNGD"]
    train = lambda lr, sel=sel: float(
        np.mean(np.asarray(sel[f"{lr:g}"]["train_loss"])[:, -1]))
    lo, hi, ch = rec["grid"][0], rec["grid"][-1], rec["chosen"]
    lines.append(
        f"- {kind}: α = {lo:g} is slow ({train(lo):.4f} after {cfg['steps']}"
        f" steps), α = {hi:g} stalls at a floor ({train(hi):.4f}), the chosen"
        f" α = {ch:g} ends at {train(ch):.4f}.")
  lines += ["", "| model | claim | difference A − B [95% CI] | verdict |",
            "|---|---|---:|---|"]
  for c in payload["claims"]:
    pct = c["metric"].endswith("accuracy")
    diff = _common.format_ci(c, scale=100 if pct else 1,
                             digits=2 if pct else 4)
    unit = " pp" if pct else ""
    lines.append(f"| {c['group']} | {c['claim']} | {diff}{unit} |"
                 f" {c['verdict']} |")
  lines += ["", f"Tuning: {cfg['tuning_rule']}", "",
            f"Verdicts: {cfg['verdict_rule']}", "",
            f"Wall time: {payload['elapsed_s']:.0f} s for the whole run (every"
            " grid, widening and final run; each compiled once per method and"
            " phase) on the machine below, shared with other jobs."]
  return "\n".join(lines) + "\n"


def plot(payload):
  import matplotlib.pyplot as plt

  kinds = list(payload["results"])
  steps = payload["steps"]
  fig, axes = plt.subplots(3, len(kinds), squeeze=False,
                           figsize=(5.5 * len(kinds), 10), sharex=True)
  for col, kind in enumerate(kinds):
    for name, res in payload["results"][kind].items():
      ls = "--" if name.startswith("SGD") else "-"
      lr = payload["tuning"][f"{kind}/{name}"]["chosen"]
      for row, key in enumerate(("train_loss", "test_acc")):
        axes[row][col].plot(steps, np.asarray(res[key]).mean(0), ls=ls,
                            label=f"{name} ({lr:g})")
    # The paper's two SNGD points on the constant-α grid (selection runs):
    # a small α is slow, a large α stalls.
    sel = payload["selection_curves"][f"{kind}/SNGD"]
    cmap = plt.get_cmap("viridis")
    for i, (lr, res) in enumerate(sel.items()):
      axes[2][col].plot(steps, np.asarray(res["train_loss"]).mean(0),
                        color=cmap(i / max(1, len(sel) - 1)), label=f"α={lr}")
    axes[0][col].set_yscale("log")
    axes[2][col].set_yscale("log")
    axes[0][col].set_title(f"{kind}: training loss (tuned, 5 seeds)")
    axes[1][col].set_title(f"{kind}: test accuracy (tuned, 5 seeds)")
    axes[2][col].set_title(f"{kind}: SNGD constant-α grid (selection runs)")
    axes[1][col].set_ylim(0.8, 1.0)
    axes[2][col].set_xlabel("step")
    axes[0][col].legend(fontsize=7)
    axes[2][col].legend(fontsize=7)
  fig.suptitle("SNGD (constant α) vs S-SNGD schedules vs stagewise SGD,"
               f" batch {payload['config']['batch']}, each tuned")
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

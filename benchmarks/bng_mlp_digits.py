"""BNG paper Figure 1 on real data: deep sigmoid MLPs on scikit-learn digits.

Block-normalized gradients (Yu et al. 2017, "Block-Normalized Gradient Method")
claim to train deep sigmoid MLPs that stall under the plain optimizer: the
layer gradients of a deep sigmoid net shrink towards the input (vanishing
gradients) and normalizing each layer's gradient to unit norm lets every layer
move. This script trains sigmoid MLPs of 6, 12 and 18 hidden layers x 100
units on ``sklearn.datasets.load_digits`` (the benchmarks' one split:
stratified 80/20, standardized; see ``_common.load_digits``), batch 100, with

  * Adam vs ``normopt.adam_ng``,
  * SGD-momentum 0.9 vs ``normopt.sgd_ng``,
  * AdaGrad vs ``normopt.adagrad_ng``,

EACH AT ITS OWN STEP SIZE, by the benchmarks' tuning protocol
(``_common.TUNING_RULE``): per (depth, optimizer) a log grid of step sizes
sqrt(10) apart on a validation split carved from the training set
(``_common.SELECT_SEEDS``), widened while the choice is at an edge; then
fresh seeds (``_common.FINAL_SEEDS``) at the chosen step size on the whole
training set. Per depth, each "NG beats its base" claim is judged by
``_common.VERDICT_RULE`` on the final TRAINING loss (what the paper's Fig. 1
plots) and on the final test loss.

Run from the repository root::

  python benchmarks/bng_mlp_digits.py          # demo: depth 12, 1000 steps
  python benchmarks/bng_mlp_digits.py --full   # all depths: benchmarks/results/
  python benchmarks/bng_mlp_digits.py --quick  # seconds, for tests

The demo and quick runs write to ``--out`` or a temporary folder, never into
``benchmarks/results/``. Every step of one (depth, optimizer, phase) is one
``jax.lax.scan`` in one ``jax.jit``, all its (step size, seed) pairs vmapped:
one compile for the selection grid, one for the final seeds (and one more if
the grid widens).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import _common
import normopt

# name -> lr -> optimizer. Momentum 0.9 for both SGD forms; everything else
# is the library default.
METHODS = {
    "Adam": lambda lr: optax.adam(lr),
    "AdamNG": lambda lr: normopt.adam_ng(lr),
    "SGDM": lambda lr: optax.sgd(lr, momentum=0.9),
    "SGDM-NG": lambda lr: normopt.sgd_ng(lr, momentum=0.9),
    "AdaGrad": lambda lr: optax.adagrad(lr),
    "AdaGrad-NG": lambda lr: normopt.adagrad_ng(lr),
}
# Centres of the step-size grids (each grid: _common.log_grid(centre, n)).
# The widening of _common.tune_lr moves an edge choice inwards.
CENTRES = {"Adam": 1e-3, "AdamNG": 1e-3, "SGDM": 1.0, "SGDM-NG": 0.1,
           "AdaGrad": 1.0, "AdaGrad-NG": 0.3162}
# (plain, block-normalized): each claim is "NG beats plain".
PAIRS = [("Adam", "AdamNG"), ("SGDM", "SGDM-NG"), ("AdaGrad", "AdaGrad-NG")]

PAPER = ("BNG §4.1, Fig. 1 (sigmoid MLPs of 6, 12 and 18 layers on MNIST): "
         "the block-normalized forms of SGD-momentum, Adam and AdaGrad train "
         "deep sigmoid networks where the plain optimizers stall "
         "(qualitative: loss curves, no numbers)")

FULL = dict(depths=(6, 12, 18), steps=1500, eval_every=50, batch=100,
            width=100, grid_points=5)
# The README demo, shrunk to fit 5 minutes on 2 CPU cores: depth 12 only (the
# depth where an earlier probe saw NG's advantage survive tuning) and 1000
# steps; the same grids, selection seeds and final seeds as the full run.
DEMO = dict(FULL, depths=(12,), steps=1000)
QUICK = dict(depths=(3,), steps=40, eval_every=20, batch=100, width=32,
             grid_points=5, pad_widening=True)


def init_mlp(rng, sizes):
  """Glorot-normal kernels, zero biases; one ``{"kernel", "bias"}`` per layer."""
  params = {}
  for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    std = math.sqrt(2.0 / (n_in + n_out))
    params[f"dense_{i:02d}"] = {
        "kernel": (std * rng.standard_normal((n_in, n_out))).astype(np.float32),
        "bias": np.zeros((n_out,), np.float32),
    }
  return params


def mlp(params, x):
  names = sorted(params)
  for name in names[:-1]:
    x = jax.nn.sigmoid(x @ params[name]["kernel"] + params[name]["bias"])
  return x @ params[names[-1]]["kernel"] + params[names[-1]]["bias"]


def loss_fn(params, x, y):
  logits = mlp(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def metrics(params, x, y):
  logits = mlp(params, x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def _curves(curves):
  """``(seeds, evals, 4)`` -> per-curve nested lists, and per-seed finals."""
  out = _common.curves_dict(curves)
  out["final"] = {k: curves[:, -1, i].tolist()
                  for i, k in enumerate(_common.CURVES)}
  return out


def tune_and_train(name, depth, cfg, data, val_data):
  """Selection on the validation split, then the final seeds: two compiles."""
  sizes = [data.x_train.shape[1]] + [cfg["width"]] * depth + [10]
  init = lambda rng: init_mlp(rng, sizes)
  args = (loss_fn, metrics)
  train = (cfg["steps"], cfg["eval_every"], cfg["batch"])
  select = _common.make_vmapped_run(METHODS[name], init, *args, val_data, *train)

  def evaluate(lrs, seeds):
    """Final validation losses (the "test" curve of the selection split)."""
    n = len(lrs)
    if cfg.get("pad_widening") and n < cfg["grid_points"]:
      # A widening step padded to the grid's shape reuses its compiled
      # program: cheaper than a compile when runs are short (--quick).
      lrs = list(lrs) + [lrs[-1]] * (cfg["grid_points"] - n)
    return select(seeds, lrs)[:n, :, -1, 2]

  record = _common.tune_lr(
      evaluate, _common.log_grid(CENTRES[name], cfg["grid_points"]))
  final = _common.make_vmapped_run(METHODS[name], init, *args, data, *train)
  seeds = list(_common.FINAL_SEEDS)
  curves = final(seeds, [record["chosen"]])[0]
  record["final_seeds"] = seeds
  return record, dict(lr=record["chosen"], seeds=seeds, **_curves(curves))


def claims_for(results, depth):
  """Per pair and metric, "NG beats plain" on the final seeds."""
  out = []
  for metric, key in (("final train loss", "train_loss"),
                      ("final test loss", "test_loss")):
    for base, ng in PAIRS:
      out.append(_common.claim(
          f"{ng} beats {base}", results[ng]["final"][key],
          results[base]["final"][key], metric=metric, paper=PAPER,
          group=f"depth {depth}"))
  return out


def run(cfg, mode="full", quiet=False):
  data = _common.load_digits()
  val_data = _common.selection_split(
      _common.load_digits(val_fraction=_common.VAL_FRACTION))
  tuning, results, claims = {}, {}, []
  jobs = [(d, name) for d in cfg["depths"] for name in METHODS]
  t0 = time.time()
  for depth, name in tqdm(jobs, desc="bng_mlp_digits", disable=quiet):
    record, res = tune_and_train(name, depth, cfg, data, val_data)
    tuning[f"{name}, depth {depth}"] = dict(
        record, method=name, group=f"depth {depth}")
    results.setdefault(str(depth), {})[name] = res
    if len(results[str(depth)]) == len(METHODS):
      claims += claims_for(results[str(depth)], depth)
  return {
      "benchmark": "bng_mlp_digits",
      "config": dict(
          cfg, depths=list(cfg["depths"]), mode=mode, shrunk=SHRUNK[mode],
          grid_centres=CENTRES, select_seeds=list(_common.SELECT_SEEDS),
          final_seeds=list(_common.FINAL_SEEDS),
          val_fraction=_common.VAL_FRACTION,
          optimizers={"SGDM": "momentum 0.9", "other": "library defaults"},
          tuning_rule=_common.TUNING_RULE,
          verdict_rule=_common.VERDICT_RULE,
          data=_common.DIGITS_CONVENTION,
          n_train=int(data.x_train.shape[0]),
          n_val=int(val_data.x_test.shape[0]),
          n_test=int(data.x_test.shape[0]),
          model="sigmoid MLP, Glorot-normal init, zero bias",
          machine=_common.machine_info()),
      "steps": list(range(0, cfg["steps"] + 1, cfg["eval_every"])),
      "tuning": tuning,
      "results": results,
      "claims": claims,
      "elapsed_s": time.time() - t0,
  }


SHRUNK = {
    "full": None,
    "demo": ("demo: depth 12 only and 1000 steps per run; the full run "
             "(--full) runs depths 6, 12 and 18 for 1500 steps. Grids, "
             "selection seeds and final seeds are the full run's"),
    "quick": "quick: depth 3, width 32, 40 steps (a smoke test, not a result)",
    "partial": "partial: fewer steps than the full run",
}


CHANCE_MARGIN = 0.01


def at_chance(record):
  """Whether every step size of a tuning record ended at chance or worse."""
  means = [math.inf if m is None else m for m in record["mean_val_loss"]]
  return min(means) >= math.log(10) - CHANCE_MARGIN


def _pm(values, digits=3):
  m, s = _common.mean_std(values)
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(payload):
  cfg = payload["config"]
  n = len(cfg["final_seeds"])
  lines = []
  if cfg.get("shrunk"):
    lines += [f"**Shrunk run** — {cfg['shrunk']}.", ""]
  lines += [
      f"Sigmoid MLPs, {cfg['width']} units per hidden layer, on digits; batch "
      f"{cfg['batch']}, {cfg['steps']} steps for every optimizer. Each "
      f"(depth, optimizer) has its own step size, chosen on the validation "
      f"split; final losses are mean ± std over {n} fresh seeds at that step "
      f"size.",
      "",
      "| depth | optimizer | chosen lr | grid | interior | train loss |"
      " test loss | test acc |",
      "|---:|---|---:|---|:-:|---:|---:|---:|",
  ]
  stalled = False
  for depth, per_opt in payload["results"].items():
    for name, res in per_opt.items():
      t = payload["tuning"][f"{name}, depth {depth}"]
      grid = f"{t['grid'][0]:g} … {t['grid'][-1]:g} ({len(t['grid'])})"
      interior = "yes" if t["interior"] else "no"
      if at_chance(t):
        stalled, interior = True, interior + "*"
      fin = res["final"]
      lines.append(
          f"| {depth} | {name} | {res['lr']:g} | {grid} | {interior} |"
          f" {_pm(fin['train_loss'])} | {_pm(fin['test_loss'])} |"
          f" {_pm(fin['test_acc'])} |")
  if stalled:
    lines += [
        "",
        f"\\* Every step size of the grid ended at chance or worse (mean "
        f"validation loss ≥ ln 10 − {CHANCE_MARGIN:g}): this optimizer did not "
        f"train at any of them, and which one counts as chosen is noise."]
  lines += [
      "",
      "Claims (paired over the final seeds; difference NG − plain, negative ="
      " NG lower, with its 95% CI):",
      "",
      "| depth | claim | metric | NG − plain [95% CI] | verdict |",
      "|---:|---|---|---:|---|",
  ]
  for c in payload["claims"]:
    lines.append(f"| {c['group'].split()[-1]} | {c['claim']} | {c['metric']} |"
                 f" {_common.format_ci(c, digits=3)} | {c['verdict']} |")
  lines += ["", f"Paper: {PAPER}.", "",
            f"Tuning: {cfg['tuning_rule']}", "", f"Verdicts: {cfg['verdict_rule']}"]
  return "\n".join(lines) + "\n"


def plot(payload):
  import matplotlib.pyplot as plt

  depths = list(payload["results"])
  steps = payload["steps"]
  fig, axes = plt.subplots(len(PAIRS), len(depths), squeeze=False,
                           figsize=(4.2 * len(depths) + 0.5, 3 * len(PAIRS)),
                           sharex=True)
  for col, depth in enumerate(depths):
    for row, (base, ng) in enumerate(PAIRS):
      ax = axes[row][col]
      for name, color in ((base, "tab:blue"), (ng, "tab:red")):
        res = payload["results"][depth][name]
        tr = np.asarray(res["train_loss"]).mean(0)
        te = np.asarray(res["test_loss"]).mean(0)
        ax.plot(steps, tr, color=color, label=f"{name} (lr {res['lr']:g}) train")
        ax.plot(steps, te, color=color, ls="--", lw=1, label=f"{name} test")
      ax.axhline(math.log(10), color="gray", lw=0.5, ls=":")
      ax.set_title(f"{depth} hidden layers: {base} vs {ng}", fontsize=9)
      ax.set_ylim(0, 2.6)
      if row == len(PAIRS) - 1:
        ax.set_xlabel("step")
      if col == 0:
        ax.set_ylabel("cross-entropy")
      ax.legend(fontsize=7)
  n = len(payload["config"]["final_seeds"])
  fig.suptitle("Deep sigmoid MLPs on digits, each optimizer at its tuned step "
               f"size (mean of {n} seeds): plain (blue) vs block-normalized "
               "(red); dotted = chance", fontsize=10)
  return fig


def configure(argv=None):
  """Parses the command line: ``(args, mode, cfg, out)``.

  ``mode`` is "demo" (no flag), "full" (``--full``), "quick" or "partial"
  (``--full --steps N``); only "full" writes into ``benchmarks/results/``.
  """
  parser = _common.make_parser(__doc__)
  parser.add_argument(
      "--full", action="store_true",
      help="the full run (depths 6, 12, 18), written to benchmarks/results/")
  parser.add_argument("--steps", type=int, default=None,
                      help="override the number of steps (a partial run)")
  args = parser.parse_args(argv)
  if args.full and args.quick:
    parser.error("--full and --quick exclude each other")
  mode = "quick" if args.quick else "full" if args.full else "demo"
  cfg = dict({"quick": QUICK, "full": FULL, "demo": DEMO}[mode])
  if args.steps:
    cfg["steps"] = args.steps
    mode = "partial" if mode == "full" else mode
  out = _common.output_dir(parser, args, "bng_mlp_digits",
                           partial=mode != "full")
  return args, mode, cfg, out


def main(argv=None):
  args, mode, cfg, out = configure(argv)
  if SHRUNK[mode]:
    print(f"[{mode}] {SHRUNK[mode]}")
  if args.steps and mode == "demo":
    print(f"[demo] --steps {args.steps} overrides the demo's {DEMO['steps']}")
  payload = run(cfg, mode, args.quiet)
  table = markdown_table(payload)
  _common.write_results(out, "bng_mlp_digits", payload, table,
                        {"bng_mlp_digits.png": plot})
  print(table)
  print(f"{payload['elapsed_s']:.0f} s")
  return payload


if __name__ == "__main__":
  main()

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

The full run (and ``--quick``) adds the same step under two other per-block
norms (issue 18, ``normopt.block_normalize``), used the way NG is used here
(the gradient normalized BEFORE the base optimizer):
``optax.chain(normopt.block_normalize(blocks="leaf", norm=N), base)`` with
``N = "spectral"`` (each Dense kernel's polar factor by Newton–Schulz, each
bias its l2 direction) or ``N = "sign"``, and ``base`` SGD-momentum 0.9 or
Adam: SGDM-spectral, Adam-spectral, SGDM-sign and Adam-sign, each tuned by the
same protocol. Their claims, per depth and on the same two losses: "<form>
beats its tuned plain optimizer" and "<form> beats the NG form of the same
base" (the comparison with BNG's Euclidean normalization).

Run from the repository root::

  python benchmarks/bng_mlp_digits.py          # demo: depth 12, 1000 steps
  python benchmarks/bng_mlp_digits.py --full   # all depths: benchmarks/results/
  python benchmarks/bng_mlp_digits.py --quick  # seconds, for tests

The full run can go in parts: ``--full --methods A B ... --out DIR`` runs a
subset of the optimizers (written like a partial run, never into
``benchmarks/results/``) and ``--merge DIR...`` joins the parts of one
configuration into the result (claims recomputed from the per-seed finals).

The demo and quick runs write to ``--out`` or a temporary folder, never into
``benchmarks/results/``. Every step of one (depth, optimizer, phase) is one
``jax.lax.scan`` in one ``jax.jit``, all its (step size, seed) pairs vmapped:
one compile for the selection grid, one for the final seeds (and one more if
the grid widens).
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

# The same step under other per-block norms (issue 18): the gradient's
# steepest direction per leaf, then the base optimizer -- the order in which
# NG is used here (sgd_ng / adam_ng normalize the gradient before the base
# optimizer's moments). "spectral": each Dense kernel's polar factor by
# Newton-Schulz (normopt's defaults: 5 steps, Muon's coefficients), each bias
# its l2 direction; "sign": sign(g) elementwise. Full run and --quick only:
# the README demo keeps the six optimizers above.
BASES = {"SGDM": lambda lr: optax.sgd(lr, momentum=0.9),
         "Adam": lambda lr: optax.adam(lr)}


def normed(norm, base):
  """``lr -> chain(block_normalize(blocks="leaf", norm=norm), BASES[base](lr))``."""
  return lambda lr: optax.chain(
      normopt.block_normalize(blocks="leaf", norm=norm), BASES[base](lr))


NORM_METHODS = {f"{base}-{norm}": normed(norm, base)
                for norm in ("spectral", "sign") for base in ("SGDM", "Adam")}
ALL_METHODS = {**METHODS, **NORM_METHODS}
# Centres from the per-coordinate step: a sign step moves every coordinate by
# lr (times momentum's 1/(1 - 0.9) for SGDM), a spectral step a 100 x 100
# kernel's by about lr/10; Adam's per-coordinate scaling puts both Adam forms
# at Adam's scale. SGDM-sign at 1e-4 and SGDM-spectral at 0.01 match Adam's
# chosen ~1e-3 per coordinate (the spectral grid also reaches the 0.03 that
# --quick's short runs chose).
CENTRES.update({"SGDM-spectral": 0.01, "Adam-spectral": 1e-3,
                "SGDM-sign": 1e-4, "Adam-sign": 1e-3})
# (plain, other norm): "<form> beats its tuned plain optimizer".
NORM_PAIRS = [(name.split("-")[0], name) for name in NORM_METHODS]
# (NG, other norm): "<form> beats the NG form of its base".
NG_OF = {"SGDM": "SGDM-NG", "Adam": "AdamNG"}
VS_NG = [(NG_OF[name.split("-")[0]], name) for name in NORM_METHODS]
NORM_PAPER = (
    "issue 18: the normalized step under other per-block norms -- sign "
    "(signSGD/Signum, Bernstein et al. 2018) and spectral (Muon, Jordan et "
    "al. 2024); no paper reports them on deep sigmoid MLPs (exploratory)")
VS_NG_PAPER = (
    "issue 18: which norm's steepest direction, spectral or sign vs BNG's "
    "per-layer l2 (NG), trains deep sigmoid MLPs better; no paper claim "
    "(exploratory; 'beats' = lower loss)")
KINDS = (("NG vs plain", PAIRS, PAPER), ("norm vs plain", NORM_PAIRS, NORM_PAPER),
         ("norm vs NG", VS_NG, VS_NG_PAPER))

FULL = dict(depths=(6, 12, 18), steps=1500, eval_every=50, batch=100,
            width=100, grid_points=5, methods=tuple(ALL_METHODS))
# The README demo, shrunk to fit 5 minutes on 2 CPU cores: depth 12 only (the
# depth where an earlier probe saw NG's advantage survive tuning), 1000 steps
# and BNG's six optimizers; the same grids, selection seeds and final seeds
# as the full run.
DEMO = dict(FULL, depths=(12,), steps=1000, methods=tuple(METHODS))
# --quick: the selection and the final runs on data of one shape (n_images:
# training and evaluation images, both phases alike) in calls of
# pairs_per_call (step size, seed) pairs: one compiled program per optimizer
# serves the grid, its widenings and the final seeds.
QUICK = dict(depths=(3,), steps=40, eval_every=20, batch=100, width=32,
             grid_points=5, n_images=(1024, 256), pairs_per_call=5,
             methods=tuple(ALL_METHODS))


def init_mlp(rng, sizes):
  """Glorot-normal kernels, zero biases; one ``{"kernel", "bias"}`` per layer."""
  params = {}
  for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
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
  """Selection on the validation split, then the final seeds: two compiles
  (one in --quick, whose two phases have data of the same shapes)."""
  sizes = [data.x_train.shape[1]] + [cfg["width"]] * depth + [10]
  init = lambda rng: init_mlp(rng, sizes)
  args = (loss_fn, metrics)
  train = (cfg["steps"], cfg["eval_every"], cfg["batch"])
  per_call = cfg.get("pairs_per_call")
  select = _common.make_vmapped_run(ALL_METHODS[name], init, *args, val_data,
                                    *train, pairs_per_call=per_call)

  def evaluate(lrs, seeds):
    """Final validation losses (the "test" curve of the selection split)."""
    return select(seeds, lrs)[:, :, -1, 2]

  record = _common.tune_lr(
      evaluate, _common.log_grid(CENTRES[name], cfg["grid_points"]))
  if per_call:
    final = functools.partial(select, data=data)
  else:
    final = _common.make_vmapped_run(ALL_METHODS[name], init, *args, data,
                                     *train)
  seeds = list(_common.FINAL_SEEDS)
  curves = final(seeds, [record["chosen"]])[0]
  record["final_seeds"] = seeds
  return record, dict(lr=record["chosen"], seeds=seeds, **_curves(curves))


def claim_pairs(names):
  """``(kind, b, a, paper)`` of every claim "a beats b" among ``names``."""
  return [(kind, b, a, paper) for kind, pairs, paper in KINDS
          for b, a in pairs if a in names and b in names]


def claims_for(results, depth):
  """Per pair and metric, "a beats b" on the final seeds: BNG's "NG beats
  plain", then each other norm against plain and against NG."""
  out = []
  for metric, key in (("final train loss", "train_loss"),
                      ("final test loss", "test_loss")):
    for kind, b, a, paper in claim_pairs(results):
      out.append(_common.claim(
          f"{a} beats {b}", results[a]["final"][key],
          results[b]["final"][key], metric=metric, paper=paper,
          group=f"depth {depth}", kind=kind))
  return out


def run(cfg, mode="full", quiet=False):
  n_train, n_eval = cfg.get("n_images", (None, None))
  data, val_data = _common.tuning_data(n_train=n_train, n_eval=n_eval)
  tuning, results, claims = {}, {}, []
  methods = list(cfg["methods"])
  jobs = [(d, name) for d in cfg["depths"] for name in methods]
  t0 = time.time()
  for depth, name in tqdm(jobs, desc="bng_mlp_digits", disable=quiet):
    record, res = tune_and_train(name, depth, cfg, data, val_data)
    tuning[f"{name}, depth {depth}"] = dict(
        record, method=name, group=f"depth {depth}")
    results.setdefault(str(depth), {})[name] = res
    if len(results[str(depth)]) == len(methods):
      claims += claims_for(results[str(depth)], depth)
  return {
      "benchmark": "bng_mlp_digits",
      "config": dict(
          cfg, depths=list(cfg["depths"]), methods=methods, mode=mode,
          shrunk=SHRUNK[mode],
          grid_centres={n: CENTRES[n] for n in methods},
          select_seeds=list(_common.SELECT_SEEDS),
          final_seeds=list(_common.FINAL_SEEDS),
          val_fraction=_common.VAL_FRACTION,
          optimizers=optimizers(methods),
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


NORM_CHAIN = ("optax.chain(normopt.block_normalize(blocks='leaf', norm=N), "
              "base): the gradient's per-leaf steepest direction under N, then "
              "the base optimizer (SGDM momentum 0.9 or Adam, defaults), the "
              "order NG uses; spectral: Newton-Schulz, 5 steps, Muon's "
              "coefficients")


def optimizers(methods):
  """The config's description of the optimizers of ``methods``."""
  out = {"SGDM": "momentum 0.9", "other": "library defaults"}
  if any(n in NORM_METHODS for n in methods):
    out["spectral, sign"] = NORM_CHAIN
  return out


#: Config keys that may differ between parts of one full run (``--merge``).
_PART_KEYS = ("methods", "grid_centres", "optimizers", "machine", "parts")


def _names(part):
  return list(next(iter(part["results"].values())))


def merge(parts):
  """``(result, complete)``: parts run on disjoint optimizer subsets, joined.

  The parts must share every config entry but :data:`_PART_KEYS` (same
  depths, steps, seeds, grid rule, data...). Tuning records and per-seed
  curves are copied; claims are recomputed from the merged per-seed finals;
  ``elapsed_s`` is the sum of the parts' wall seconds (an upper bound when
  parts ran side by side; each part's own is in ``config["parts"]``). Complete
  when every part is a full run and together they hold every optimizer.
  """
  _common.check_same_config(parts, _PART_KEYS)
  names, results, tuning, info = [], {}, {}, []
  for part in parts:
    got = _names(part)
    if set(got) & set(names):
      raise ValueError(f"parts overlap: {sorted(set(got) & set(names))}")
    names += got
    tuning.update(part["tuning"])
    for depth, per_opt in part["results"].items():
      results.setdefault(depth, {}).update(per_opt)
    info.append({"methods": got, "elapsed_s": part["elapsed_s"],
                 "machine": part["config"]["machine"]})
  order = [n for n in ALL_METHODS if n in names] + [
      n for n in names if n not in ALL_METHODS]
  cfg = dict(parts[0]["config"])
  depths = list(cfg["depths"])
  if {int(d) for d in results} != set(depths):
    raise ValueError(f"parts cover depths {sorted(results)}, config {depths}")
  cfg.update(
      methods=order, optimizers=optimizers(order), parts=info,
      grid_centres={n: c for n in order for p in parts
                    for m, c in p["config"]["grid_centres"].items() if m == n},
      machine="; ".join(f"{', '.join(i['methods'])}: {i['machine']}"
                        for i in info))
  results = {str(d): {n: results[str(d)][n] for n in order} for d in depths}
  claims = []
  for d in depths:
    claims += claims_for(results[str(d)], d)
  result = {
      "benchmark": "bng_mlp_digits", "config": cfg, "steps": parts[0]["steps"],
      "tuning": {f"{n}, depth {d}": tuning[f"{n}, depth {d}"]
                 for d in depths for n in order},
      "results": results, "claims": claims,
      "elapsed_s": sum(i["elapsed_s"] for i in info)}
  complete = (all(p["config"]["mode"] == "full" for p in parts)
              and set(order) == set(ALL_METHODS))
  return result, complete


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
  if "spectral, sign" in cfg.get("optimizers", {}):
    lines += ["", f"Spectral and sign forms: {cfg['optimizers']['spectral, sign']}."]
  if cfg.get("parts"):
    lines += ["", "Run in parts, merged (`--merge`): " + "; ".join(
        f"{', '.join(p['methods'])} ({p['elapsed_s']:.0f} s)"
        for p in cfg["parts"]) + "."]
  kinds = [k for k, _, _ in KINDS
           if any(c.get("kind", "NG vs plain") == k for c in payload["claims"])]
  for kind in kinds:
    lines += [
        "",
        f"Claims, {kind} (paired over the final seeds; A − B for the claim \"A"
        " beats B\", negative = A lower, with its 95% CI):",
        "",
        "| depth | claim | metric | A − B [95% CI] | verdict |",
        "|---:|---|---|---:|---|",
    ]
    for c in payload["claims"]:
      if c.get("kind", "NG vs plain") == kind:
        lines.append(
            f"| {c['group'].split()[-1]} | {c['claim']} | {c['metric']} |"
            f" {_common.format_ci(c, digits=3)} | {c['verdict']} |")
  papers = [paper for k, _, paper in KINDS if k in kinds]
  lines += ["", *[f"{'Paper' if p == PAPER else 'Question'}: {p}.\n"
                  for p in papers],
            f"Tuning: {cfg['tuning_rule']}", "", f"Verdicts: {cfg['verdict_rule']}"]
  return "\n".join(lines) + "\n"


#: Plot rows: one base optimizer each, its forms in these colours.
FAMILIES = (("SGDM", ("SGDM", "SGDM-NG", "SGDM-spectral", "SGDM-sign")),
            ("Adam", ("Adam", "AdamNG", "Adam-spectral", "Adam-sign")),
            ("AdaGrad", ("AdaGrad", "AdaGrad-NG")))
COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange")


def plot(payload):
  import matplotlib.pyplot as plt

  depths = list(payload["results"])
  names = list(payload["results"][depths[0]])
  rows = [(base, [n for n in forms if n in names]) for base, forms in FAMILIES]
  rows = [(base, forms) for base, forms in rows if forms]
  steps = payload["steps"]
  fig, axes = plt.subplots(len(rows), len(depths), squeeze=False,
                           figsize=(4.2 * len(depths) + 0.5, 3 * len(rows) + 0.4),
                           sharex=True)
  for col, depth in enumerate(depths):
    for row, (base, forms) in enumerate(rows):
      ax = axes[row][col]
      for name in forms:
        color = COLORS[FAMILIES[[b for b, _ in FAMILIES].index(base)][1]
                       .index(name)]
        res = payload["results"][depth][name]
        tr = np.asarray(res["train_loss"]).mean(0)
        te = np.asarray(res["test_loss"]).mean(0)
        ax.plot(steps, tr, color=color, label=f"{name} (lr {res['lr']:g})")
        ax.plot(steps, te, color=color, ls="--", lw=1)
      ax.axhline(math.log(10), color="gray", lw=0.5, ls=":")
      ax.set_title(f"{depth} hidden layers: {base} forms", fontsize=9)
      ax.set_ylim(0, 2.6)
      if row == len(rows) - 1:
        ax.set_xlabel("step")
      if col == 0:
        ax.set_ylabel("cross-entropy")
      ax.legend(fontsize=7)
  n = len(payload["config"]["final_seeds"])
  # Name only the forms this figure draws (the demo draws plain and NG).
  drawn = {forms.index(name) for _, forms in FAMILIES for name in forms if name in names}
  kinds = ", ".join(f"{k} ({c.removeprefix('tab:')})" for i, (k, c) in enumerate(
      zip(("plain", "NG", "spectral", "sign"), COLORS, strict=True)) if i in drawn)
  fig.suptitle(
      f"Deep sigmoid MLPs on digits, each optimizer at its tuned step size "
      f"(mean of {n} seeds)\n{kinds}; solid = train, dashed = test, dotted = chance",
      fontsize=10)
  return fig


def configure(argv=None):
  """Parses the command line: ``(args, mode, cfg, out)``.

  ``mode`` is "demo" (no flag), "full" (``--full``), "quick" or "partial"
  (``--full --steps N``); only "full" with every optimizer writes into
  ``benchmarks/results/`` (a ``--methods`` subset is a part, written
  elsewhere). With ``--merge``: ``(args, "merge", None, None)``.
  """
  parser = make_parser()
  args = parser.parse_args(argv)
  if args.merge:
    return args, "merge", None, None
  if args.full and args.quick:
    parser.error("--full and --quick exclude each other")
  mode = "quick" if args.quick else "full" if args.full else "demo"
  cfg = dict({"quick": QUICK, "full": FULL, "demo": DEMO}[mode])
  if args.steps:
    cfg["steps"] = args.steps
    mode = "partial" if mode == "full" else mode
  if args.methods:
    cfg["methods"] = tuple(n for n in ALL_METHODS if n in args.methods)
  subset = set(cfg["methods"]) != set(ALL_METHODS) and mode == "full"
  out = _common.output_dir(parser, args, "bng_mlp_digits",
                           partial=mode != "full" or subset)
  return args, mode, cfg, out


def make_parser():
  parser = _common.make_parser(__doc__)
  parser.add_argument(
      "--full", action="store_true",
      help="the full run (depths 6, 12, 18), written to benchmarks/results/")
  parser.add_argument("--steps", type=int, default=None,
                      help="override the number of steps (a partial run)")
  parser.add_argument(
      "--methods", nargs="+", default=None, choices=list(ALL_METHODS),
      metavar="NAME", help="run only these optimizers (a part of the run: "
      "never written into benchmarks/results/; see --merge)")
  _common.add_merge_arg(parser, "bng_mlp_digits", "--methods")
  return parser


def main(argv=None):
  args, mode, cfg, out = configure(argv)
  if mode == "merge":
    return _common.run_merge(make_parser(), args, "bng_mlp_digits", merge,
                             markdown_table, {"bng_mlp_digits.png": plot})
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

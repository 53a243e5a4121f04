"""BNG Tables 1-2 in small: a residual CNN with BatchNorm on scikit-learn digits.

Yu et al. (2017), "Block-Normalized Gradient Method", Tables 1-2, train
ResNets and DenseNets on CIFAR with SGD-momentum and Adam, each in four forms:

* plain: the base optimizer;
* CLIP: each layer's gradient clipped to norm ``CLIP_NORM`` first
  (``normopt.clip_block_norm``);
* NG: each layer's gradient normalized to unit norm (``sgd_ng``/``adam_ng``);
* NG_adap: each layer's gradient scaled to ``alpha * ||w_layer||``
  (``sgd_ngadap``/``adam_ngadap``, ``alpha = 0.02``, the paper's rule), plus
  an ablation ``(floor 1)`` with the parameter norm floored at 1
  (``min_param_norm=1.0``, normopt's former default).

Here the model is a small residual CNN with BatchNorm (Flax Linen) and the data
are the 8x8 handwritten digits of scikit-learn (1,437 train / 360 test images).
Every method gets its own step size (``_common.TUNING_RULE``): a log grid about
sqrt(10) apart, 2 selection seeds trained on the training images minus a 20%
validation split and scored by the validation cross-entropy after the last
epoch; then 5 fresh seeds train on all 1,437 training images at the chosen step
size and are scored on the 360 test images. The tuned step size is the peak of
the paper's "constant step size with occasional decay": x0.1 at 50% and 75% of
training. Every (step size, seed) pair of a phase trains in one ``jit(vmap)``;
a seed sets the initialization and the minibatch order, the same for every
method, so the claims are paired (``_common.VERDICT_RULE``).

Run from the repository root::

  python benchmarks/bng_cnn.py            # full: writes benchmarks/results/bng_cnn.*
  python benchmarks/bng_cnn.py --quick --out /tmp/bng   # seconds
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import _common
import normopt

ALPHA = 0.02
CLIP_NORM = 1.0
MOMENTUM = 0.9
#: Grid centres: SGDM's usual 0.1; NG_adap's step is alpha * ||w_b|| times
#: the learning rate, so its grid sits higher; Adam halfway between the old
#: 1e-3 (too slow here) and 1e-2.
SGD_CENTRE = 0.1
NGADAP_SGD_CENTRE = 1.0
ADAM_CENTRE = 3.162e-3
#: --quick's training and evaluation images (the final runs' and, of the
#: same shapes, the selection's: one compiled program serves both).
QUICK_N_TRAIN, QUICK_N_TEST = 1024, 256


class ResBlock(nn.Module):
  """Two 3x3 conv + BN layers with an identity (or 1x1 conv) shortcut."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)
    y = nn.relu(bn()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
    y = bn()(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x)
      x = bn()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Stem conv, two residual stages (8x8 -> 4x4), global average pool, dense."""

  width: int = 16

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.width, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = ResBlock(self.width)(x, train)
    x = ResBlock(2 * self.width, strides=2)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(10)(x)


def make_factories(total_steps: int):
  """``{method: (grid centre, lr -> optimizer)}``: Tables 1-2's forms plus the
  NG_adap floor ablation. ``lr`` (traced) is the peak of the step decay."""

  def sched(lr):
    return optax.piecewise_constant_schedule(
        lr, {total_steps // 2: 0.1, (3 * total_steps) // 4: 0.1})

  sgd = lambda lr: optax.sgd(sched(lr), momentum=MOMENTUM)
  adam = lambda lr: optax.adam(sched(lr))
  clip = normopt.clip_block_norm
  s, a, s_adap = SGD_CENTRE, ADAM_CENTRE, NGADAP_SGD_CENTRE
  return {
      "SGDM": (s, sgd),
      "SGDM-CLIP": (s, lambda lr: optax.chain(clip(CLIP_NORM), sgd(lr))),
      "SGDM-NG": (s, lambda lr: normopt.sgd_ng(sched(lr), momentum=MOMENTUM)),
      "SGDM-NG_adap": (s_adap, lambda lr: normopt.sgd_ngadap(
          sched(lr), momentum=MOMENTUM, alpha=ALPHA)),
      "Adam": (a, adam),
      "Adam-CLIP": (a, lambda lr: optax.chain(clip(CLIP_NORM), adam(lr))),
      "Adam-NG": (a, lambda lr: normopt.adam_ng(sched(lr))),
      "Adam-NG_adap": (a, lambda lr: normopt.adam_ngadap(sched(lr),
                                                         alpha=ALPHA)),
      "SGDM-NG_adap (floor 1)": (s_adap, lambda lr: normopt.sgd_ngadap(
          sched(lr), momentum=MOMENTUM, alpha=ALPHA, min_param_norm=1.0)),
      "Adam-NG_adap (floor 1)": (a, lambda lr: normopt.adam_ngadap(
          sched(lr), alpha=ALPHA, min_param_norm=1.0)),
  }


def loss_and_error(logits, labels):
  """``[cross-entropy, error rate]`` on the evaluation split."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return jnp.stack([ce, jnp.mean(jnp.argmax(logits, -1) != labels)])


_TABLES = "Tables 1-2 (CIFAR-10/100, ResNet/DenseNet): "
CLAIMS = [
    ("SGDM-NG beats SGDM", "SGDM-NG", "SGDM", "paper",
     _TABLES + "SGD+Mom NG has lower test error than SGD+Mom"),
    ("SGDM-NG_adap beats SGDM", "SGDM-NG_adap", "SGDM", "paper",
     _TABLES + "SGD+Mom NG_adap has lower test error than SGD+Mom"),
    ("SGDM-NG beats SGDM-CLIP", "SGDM-NG", "SGDM-CLIP", "paper",
     _TABLES + "normalizing beats per-layer clipping"),
    ("Adam-NG beats Adam", "Adam-NG", "Adam", "paper",
     _TABLES + "Adam NG has lower test error than Adam"),
    ("Adam-NG_adap beats Adam", "Adam-NG_adap", "Adam", "paper",
     _TABLES + "Adam NG_adap has lower test error than Adam"),
    ("on CNNs SGDM-NG beats Adam-NG", "SGDM-NG", "Adam-NG", "paper",
     "§4: on CNNs, SGD+Mom with NG does best (constant step with decay "
     "beats adaptive step sizes)"),
    ("SGDM-NG_adap (paper rule) beats SGDM-NG_adap (floor 1)",
     "SGDM-NG_adap", "SGDM-NG_adap (floor 1)", "ablation", None),
    ("Adam-NG_adap (paper rule) beats Adam-NG_adap (floor 1)",
     "Adam-NG_adap", "Adam-NG_adap (floor 1)", "ablation", None),
]


def compute_claims(result):
  res = result["methods"]
  result["claims"] = [
      _common.claim(text, res[a]["final_test_error"],
                    res[b]["final_test_error"], metric="test error",
                    paper=paper, group=group, better=a, worse=b)
      for text, a, b, group, paper in CLAIMS if a in res and b in res]


def plot(result):
  import matplotlib.pyplot as plt

  res = result["methods"]
  epochs = np.arange(1, result["config"]["epochs"] + 1)
  families = {
      "SGDM": [n for n in res if n.startswith("SGDM")],
      "Adam": [n for n in res if n.startswith("Adam")],
  }
  families = {k: v for k, v in families.items() if v}
  fig, axes = plt.subplots(2, len(families), figsize=(6 * len(families), 8),
                           sharex=True, squeeze=False)
  for col, (family, members) in enumerate(families.items()):
    for name in members:
      r = res[name]
      for row, key in enumerate(("train_loss", "test_error")):
        m, s = _common.mean_std(r[key], axis=0)
        ax = axes[row, col]
        ax.plot(epochs, m, label=f"{name} (lr {r['lr']:.3g})",
                ls=":" if "floor" in name else "-")
        ax.fill_between(epochs, m - s, m + s, alpha=0.2)
    axes[0, col].set_yscale("log")
    axes[0, col].set_title(f"{family} family: training loss")
    axes[1, col].set_title(f"{family} family: test error")
    worst = max(np.mean(res[n]["final_test_error"]) for n in members)
    axes[1, col].set_ylim(0, min(1.0, max(0.05, 2 * worst)))
    axes[1, col].set_xlabel("epoch")
    axes[0, col].legend(fontsize=8)
  n = len(result["config"]["final_seeds"])
  fig.suptitle("BNG Tables 1-2 in small: ResNet-BN on digits,\ntuned step "
               f"sizes (mean ± std over {n} seeds)")
  return fig


def markdown(result):
  res = result["methods"]
  cfg = result["config"]
  lines = [
      "# BNG Tables 1-2 in small: residual CNN + BN on digits",
      "",
      f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, width "
      f"{cfg['width']}; each method's step size tuned (peak of a x0.1 decay "
      f"at 50% and 75% of training); NG_adap alpha={ALPHA}, CLIP layer norm "
      f"{CLIP_NORM}; {len(cfg['final_seeds'])} final seeds; test set: "
      f"{cfg['n_test']} images. Wall time of the whole run (selection and "
      f"final runs): {cfg.get('wall_seconds', 0):.0f} s" + (
          f" (the longest of {len(cfg['parts'])} processes run side by side, "
          f"one per method subset)" if cfg.get("parts") else "") + ".",
      "",
      "| method | chosen lr | grid | interior | test error % (mean ± std) "
      "| final train loss |",
      "|---|---|---|---|---|---|",
  ]
  for name, r in res.items():
    t = result["tuning"][name]
    m, s = _common.mean_std(np.asarray(r["final_test_error"]) * 100)
    tl, _ = _common.mean_std(r["final_train_loss"])
    lines.append(
        f"| {name} | {t['chosen']:.4g} | {t['grid'][0]:.3g}–{t['grid'][-1]:.3g}"
        f" ({len(t['grid'])}) | {'yes' if t['interior'] else 'no'} | "
        f"{m:.2f} ± {s:.2f} | {tl:.2e} |")
  lines += ["", "| group | claim | difference in test error (pp) [95% CI] | "
            "verdict |", "|---|---|---|---|"]
  for c in result["claims"]:
    lines.append(f"| {c['group']} | {c['claim']} | "
                 f"{_common.format_ci(c, scale=100)} | {c['verdict']} |")
  lines += ["", "One test image is 0.28 pp. The ablation rows compare "
            "NG_adap's paper rule (alpha·‖w_b‖) with the parameter norm "
            "floored at 1, each at its own tuned step size (identical "
            "numbers mean the floor never bound: every layer block of this "
            "model starts with a norm above 2).", "",
            f"Tuning: {_common.TUNING_RULE} Here the selection score is the "
            "validation cross-entropy after the last epoch; grids and "
            "selection losses are in the JSON.", "",
            f"Verdicts: {_common.VERDICT_RULE}"]
  return "\n".join(lines) + "\n"


#: Config keys that may differ between parts of one run (see ``--merge``).
_PART_KEYS = ("machine", "wall_seconds", "grid_centres")


def merge(parts):
  """One result from the JSONs of runs of disjoint method subsets.

  The parts must share every config entry but :data:`_PART_KEYS` (same
  epochs, seeds, grid rule...); they ran side by side as separate processes
  on the shared machine. Claims are recomputed from the merged per-seed
  values. Returns ``(result, complete)``.
  """
  _common.check_same_config(parts, _PART_KEYS)
  result = {"config": dict(parts[0]["config"]), "tuning": {}, "methods": {}}
  for part in parts:
    if set(part["methods"]) & set(result["methods"]):
      raise ValueError("parts overlap")
    result["tuning"].update(part["tuning"])
    result["methods"].update(part["methods"])
  order = list(make_factories(1))
  names = [n for n in order if n in result["methods"]]
  result["tuning"] = {n: result["tuning"][n] for n in names}
  result["methods"] = {n: result["methods"][n] for n in names}
  cfg = result["config"]
  cfg["grid_centres"] = {n: c for p in parts
                         for n, c in p["config"]["grid_centres"].items()}
  cfg["grid_centres"] = {n: cfg["grid_centres"][n] for n in names}
  cfg["parts"] = [{"methods": list(p["methods"]),
                   "wall_seconds": p["config"]["wall_seconds"],
                   "machine": p["config"]["machine"]} for p in parts]
  cfg["wall_seconds"] = max(p["config"]["wall_seconds"] for p in parts)
  cfg["machine"] = (f"{parts[0]['config']['machine']}; {len(parts)} "
                    "processes side by side, one per method subset")
  compute_claims(result)
  return result, names == order and not cfg["quick"]


def main(argv=None):
  parser = _common.make_parser(
      __doc__, "a few epochs, two methods, narrow model (seconds)")
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--methods", nargs="*", default=None,
                      help="subset of methods (default: all; --quick: two)")
  _common.add_merge_arg(parser, "bng_cnn", "--methods")
  args = parser.parse_args(argv)
  if args.merge:
    return _common.run_merge(parser, args, "bng_cnn", merge, markdown,
                             {"bng_cnn.png": plot})
  out = _common.output_dir(parser, args, "bng_cnn",
                           partial=bool(args.epochs or args.methods))

  quick = args.quick
  epochs = args.epochs or (2 if quick else 8)
  width = 4 if quick else 8
  batch_size = 64
  max_widen = 1 if quick else 3
  final_seeds = list(_common.FINAL_SEEDS[:3] if quick else _common.FINAL_SEEDS)
  select_seeds = list(_common.SELECT_SEEDS)
  # --quick: the selection and the final runs on data of one shape (as many
  # training and evaluation images in both), trained one (step size, seed)
  # pair per call: every call of a method runs ONE compiled program (the
  # grid, a widening, the final seeds), compiled for running fast.
  n_train, n_test = (QUICK_N_TRAIN, QUICK_N_TEST) if quick else (None, None)
  data, select = _common.tuning_data(images=True, n_train=n_train, n_eval=n_test)
  fast = (dict(pairs_per_call=1, compiler_options=_common.QUICK_COMPILER_OPTIONS)
          if quick else {})
  steps = {k: d.x_train.shape[0] // batch_size
           for k, d in (("final", data), ("select", select))}
  model = ResNet(width=width)
  factories = {k: make_factories(epochs * n) for k, n in steps.items()}
  names = args.methods or (["SGDM", "SGDM-NG"] if quick
                           else list(factories["final"]))

  result = {
      "config": {
          "epochs": epochs, "width": width, "batch_size": batch_size,
          "steps_per_epoch": steps["final"],
          "select_steps_per_epoch": steps["select"],
          "n_train": int(data.x_train.shape[0]),
          "n_select_train": int(select.x_train.shape[0]),
          "n_select_val": int(select.x_test.shape[0]),
          "n_test": int(data.x_test.shape[0]), "data": _common.DIGITS_CONVENTION,
          "grid_centres": {k: factories["final"][k][0] for k in names},
          "schedule": "x0.1 at 50% and 75% of the steps",
          "alpha": ALPHA, "clip_norm": CLIP_NORM, "momentum": MOMENTUM,
          "select_seeds": select_seeds, "final_seeds": final_seeds,
          "max_widen": max_widen, "selection_metric":
              "validation cross-entropy after the last epoch",
          "tuning_rule": _common.TUNING_RULE,
          "verdict_rule": _common.VERDICT_RULE, "quick": quick,
          "machine": _common.machine_info(),
      },
      "tuning": {}, "methods": {},
  }
  t_start = time.perf_counter()
  with tqdm(total=len(names), desc="bng_cnn", disable=args.quiet) as bar:
    for name in names:
      bar.set_postfix_str(name)
      centre, make_tx = factories["select"][name]
      run = _common.make_flax_vmapped_run(
          model, make_tx, select, batch_size, epochs, evaluate=loss_and_error,
          **fast)
      seconds = []

      def evaluate(lrs, seeds, run=run, seconds=seconds):
        r = run(seeds, lrs)
        seconds.append(r.seconds)
        return r.evaluation[:, :, -1, 0]  # validation CE after the last epoch

      rec = _common.tune_lr(evaluate, _common.log_grid(centre),
                            seeds=select_seeds, max_widen=max_widen)
      result["tuning"][name] = {**rec, "final_seeds": final_seeds,
                                "seconds": sum(seconds)}
      if quick:  # data of the selection's shapes, so the same schedule
        final = run(final_seeds, [rec["chosen"]], data=data)
      else:
        final = _common.make_flax_vmapped_run(
            model, factories["final"][name][1], data, batch_size, epochs,
            evaluate=loss_and_error)(final_seeds, [rec["chosen"]])
      losses = np.asarray(final.per_epoch[0], np.float64)  # (seeds, epochs)
      ev = np.asarray(final.evaluation[0], np.float64)  # (seeds, epochs, 2)
      result["methods"][name] = {
          "lr": rec["chosen"], "seeds": final_seeds,
          "train_loss": losses.tolist(),
          "test_loss": ev[..., 0].tolist(),
          "test_error": ev[..., 1].tolist(),
          "final_train_loss": losses[:, -1].tolist(),
          "final_test_loss": ev[:, -1, 0].tolist(),
          "final_test_error": ev[:, -1, 1].tolist(),
          "seconds": final.seconds,
      }
      bar.write(f"{name}: lr {rec['chosen']:.4g} of {rec['grid']} (interior "
                f"{rec['interior']}), test error {ev[:, -1, 1].tolist()}, "
                f"{time.perf_counter() - t_start:.0f}s")
      bar.update()
  result["config"]["wall_seconds"] = time.perf_counter() - t_start
  compute_claims(result)
  _common.write_results(out, "bng_cnn", result, markdown(result),
                        {"bng_cnn.png": plot})
  for c in result["claims"]:
    print(f"[{c['group']}] {c['claim']}: {_common.format_ci(c, scale=100)}pp "
          f"-> {c['verdict']}")
  return result


if __name__ == "__main__":
  main()

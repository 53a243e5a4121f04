"""BNG paper Figure 1 on real data: deep sigmoid MLPs on scikit-learn digits.

Block-normalized gradients (Yu et al. 2017, "Block-Normalized Gradient Method")
claim to train deep sigmoid MLPs that stall under the plain optimizer at the
same step size: the layer gradients of a deep sigmoid net shrink towards the
input (vanishing gradients) and normalizing each layer's gradient to unit norm
lets every layer move. This script trains sigmoid MLPs with 6, 12 and 18
hidden layers x 100 units on ``sklearn.datasets.load_digits`` (the
benchmarks' one split: stratified 80/20, standardized; see
``_common.load_digits``), batch 100, with

  * Adam vs ``normopt.adam_ng``,
  * SGD-momentum vs ``normopt.sgd_ng``,
  * AdaGrad vs ``normopt.adagrad_ng``,

each pair at the same step size, several seeds (vmapped), and writes the
curves (PNG), the numbers (JSON) and a markdown table.

Run from the repository root::

  python benchmarks/bng_mlp_digits.py            # full run: benchmarks/results/
  python benchmarks/bng_mlp_digits.py --quick    # seconds, into a temp folder

Every step of one (depth, optimizer) run is one ``jax.lax.scan`` inside one
``jax.jit``: one compile per (depth, optimizer), seeds vmapped.
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

# Step sizes: the usual library defaults (Adam 1e-3; SGD-momentum 0.01 with
# momentum 0.9; AdaGrad 0.01), the same for the base optimizer and its
# NG variant, as in the BNG paper's Figure 1 comparison.
LR = {"adam": 1e-3, "sgdm": 1e-2, "adagrad": 1e-2}

OPTIMIZERS = {
    "Adam": lambda: optax.adam(LR["adam"]),
    "AdamNG": lambda: normopt.adam_ng(LR["adam"]),
    "SGDM": lambda: optax.sgd(LR["sgdm"], momentum=0.9),
    "SGDM-NG": lambda: normopt.sgd_ng(LR["sgdm"], momentum=0.9),
    "AdaGrad": lambda: optax.adagrad(LR["adagrad"]),
    "AdaGrad-NG": lambda: normopt.adagrad_ng(LR["adagrad"]),
}
PAIRS = [("Adam", "AdamNG"), ("SGDM", "SGDM-NG"), ("AdaGrad", "AdaGrad-NG")]
FAMILY = {n: f for (b, g), f in zip(PAIRS, LR) for n in (b, g)}

FULL = dict(depths=(6, 12, 18), steps=1500, eval_every=50, seeds=3,
            batch=100, width=100)
QUICK = dict(depths=(3,), steps=40, eval_every=20, seeds=2, batch=100,
             width=32)


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


def run(cfg, quiet=False):
  data = _common.load_digits()
  n_classes = 10
  seeds = list(range(cfg["seeds"]))
  results = {}
  jobs = [(d, name) for d in cfg["depths"] for name in OPTIMIZERS]
  t0 = time.time()
  for depth, name in tqdm(jobs, desc="bng_mlp_digits", disable=quiet):
    sizes = [data.x_train.shape[1]] + [cfg["width"]] * depth + [n_classes]
    fn = _common.make_vmapped_run(
        OPTIMIZERS[name](), lambda rng, sizes=sizes: init_mlp(rng, sizes),
        loss_fn, metrics, data, cfg["steps"], cfg["eval_every"], cfg["batch"])
    results.setdefault(str(depth), {})[name] = _common.curves_dict(fn(seeds))
  return {
      "benchmark": "bng_mlp_digits",
      "config": dict(cfg, depths=list(cfg["depths"]), learning_rates=LR,
                     optimizers=list(OPTIMIZERS), data=_common.DIGITS_CONVENTION,
                     n_train=int(data.x_train.shape[0]),
                     n_test=int(data.x_test.shape[0]),
                     model="sigmoid MLP, Glorot-normal init, zero bias",
                     machine=_common.machine_info()),
      "steps": list(range(0, cfg["steps"] + 1, cfg["eval_every"])),
      "results": results,
      "elapsed_s": time.time() - t0,
  }


def _final(res, key):
  return _common.mean_std(np.asarray(res[key])[:, -1])


def markdown_table(payload):
  cfg = payload["config"]
  lines = [
      f"Final losses after {cfg['steps']} steps (batch {cfg['batch']}), mean"
      f" ± std over {cfg['seeds']} seeds; sigmoid MLP, {cfg['width']} units"
      " per hidden layer, digits.",
      "",
      "| depth | optimizer | lr | train loss | test loss | test acc |",
      "|---:|---|---:|---:|---:|---:|",
  ]
  for depth, per_opt in payload["results"].items():
    for name, res in per_opt.items():
      lr = cfg["learning_rates"][FAMILY[name]]
      (trm, trs), (tem, tes), (am, ast) = (
          _final(res, "train_loss"), _final(res, "test_loss"),
          _final(res, "test_acc"))
      lines.append(
          f"| {depth} | {name} | {lr:g} | {trm:.3f} ± {trs:.3f} |"
          f" {tem:.3f} ± {tes:.3f} | {am:.3f} ± {ast:.3f} |")
  return "\n".join(lines) + "\n"


def plot(payload):
  import matplotlib.pyplot as plt

  depths = list(payload["results"])
  steps = payload["steps"]
  fig, axes = plt.subplots(len(PAIRS), len(depths), squeeze=False,
                           figsize=(4 * len(depths), 3 * len(PAIRS)),
                           sharex=True)
  for col, depth in enumerate(depths):
    for row, (base, ng) in enumerate(PAIRS):
      ax = axes[row][col]
      for name, color in ((base, "tab:blue"), (ng, "tab:red")):
        res = payload["results"][depth][name]
        tr = np.asarray(res["train_loss"]).mean(0)
        te = np.asarray(res["test_loss"]).mean(0)
        ax.plot(steps, tr, color=color, label=f"{name} train")
        ax.plot(steps, te, color=color, ls="--", lw=1, label=f"{name} test")
      ax.axhline(math.log(10), color="gray", lw=0.5, ls=":")
      ax.set_title(f"{depth} hidden layers: {base} vs {ng}", fontsize=9)
      ax.set_ylim(0, 2.6)
      if row == len(PAIRS) - 1:
        ax.set_xlabel("step")
      if col == 0:
        ax.set_ylabel("cross-entropy")
      ax.legend(fontsize=7)
  fig.suptitle("Deep sigmoid MLPs on digits: base optimizer (blue) vs"
               " block-normalized (red); dotted line = chance")
  return fig


def main(argv=None):
  parser = _common.make_parser(__doc__)
  parser.add_argument("--steps", type=int, default=None)
  args = parser.parse_args(argv)
  out = _common.output_dir(parser, args, "bng_mlp_digits",
                           partial=bool(args.steps))
  cfg = dict(QUICK if args.quick else FULL)
  if args.steps:
    cfg["steps"] = args.steps
  payload = run(cfg, args.quiet)
  table = markdown_table(payload)
  _common.write_results(out, "bng_mlp_digits", payload, table,
                        {"bng_mlp_digits.png": plot})
  print(table)
  print(f"{payload['elapsed_s']:.0f} s")
  return payload


if __name__ == "__main__":
  main()

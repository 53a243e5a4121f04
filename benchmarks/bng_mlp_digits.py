"""BNG paper Figure 1 on real data: deep sigmoid MLPs on scikit-learn digits.

Block-normalized gradients (Yu et al. 2017, "Block-Normalized Gradient Method")
claim to train deep sigmoid MLPs that stall under the plain optimizer at the
same step size: the layer gradients of a deep sigmoid net shrink towards the
input (vanishing gradients) and normalizing each layer's gradient to unit norm
lets every layer move. This script trains sigmoid MLPs with 6, 12 and 18
hidden layers x 100 units on ``sklearn.datasets.load_digits`` (75/25
stratified split, standardized inputs), batch 100, with

  * Adam vs ``normopt.adam_ng``,
  * SGD-momentum vs ``normopt.sgd_ng``,
  * AdaGrad vs ``normopt.adagrad_ng``,

each pair at the same step size, several seeds (vmapped), and writes the
curves (PNG), the numbers (JSON) and a markdown table.

Run from the repository root::

  python benchmarks/bng_mlp_digits.py            # full run (a few minutes)
  python benchmarks/bng_mlp_digits.py --quick    # seconds, for tests

Every step of one (depth, optimizer) run is one ``jax.lax.scan`` inside one
``jax.jit``: one compile per (depth, optimizer), seeds vmapped.
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


def make_run(tx, sizes, data, steps, eval_every, batch):
  """jit(vmap over seeds) of a whole training run; returns the curves."""
  xtr, ytr, xte, yte = data
  n = xtr.shape[0]
  n_evals = steps // eval_every
  n_epochs = math.ceil(steps * batch / n)

  def evaluate(params):
    tr_loss, tr_acc = metrics(params, xtr, ytr)
    te_loss, te_acc = metrics(params, xte, yte)
    return jnp.stack([tr_loss, tr_acc, te_loss, te_acc])

  def one_seed(params, idx):
    def step(carry, b):
      params, state = carry
      grads = jax.grad(loss_fn)(params, xtr[b], ytr[b])
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
      inits.append(init_mlp(rng, sizes))
      order = np.concatenate([rng.permutation(n) for _ in range(n_epochs)])
      orders.append(order[: steps * batch].reshape(n_evals, eval_every, batch))
    params = jax.tree.map(lambda *a: jnp.stack(a), *inits)
    return train(params, jnp.asarray(np.stack(orders), jnp.int32))

  return run_seeds


def run(cfg, out_dir, quiet=False):
  from tqdm import tqdm

  data = load_data()
  n_classes = 10
  seeds = list(range(cfg["seeds"]))
  results = {}
  jobs = [(d, name) for d in cfg["depths"] for name in OPTIMIZERS]
  t0 = time.time()
  for depth, name in tqdm(jobs, desc="bng_mlp_digits", disable=quiet):
    sizes = [data[0].shape[1]] + [cfg["width"]] * depth + [n_classes]
    fn = make_run(OPTIMIZERS[name](), sizes, data, cfg["steps"],
                  cfg["eval_every"], cfg["batch"])
    curves = np.asarray(fn(seeds), np.float64)  # (seeds, evals, 4)
    results.setdefault(str(depth), {})[name] = {
        "train_loss": curves[:, :, 0].tolist(),
        "train_acc": curves[:, :, 1].tolist(),
        "test_loss": curves[:, :, 2].tolist(),
        "test_acc": curves[:, :, 3].tolist(),
    }
  elapsed = time.time() - t0
  steps_axis = list(range(0, cfg["steps"] + 1, cfg["eval_every"]))
  payload = {
      "benchmark": "bng_mlp_digits",
      "config": dict(cfg, depths=list(cfg["depths"]), learning_rates=LR,
                     optimizers=list(OPTIMIZERS), data="sklearn load_digits,"
                     " 75/25 stratified split (random_state=0), standardized",
                     model="sigmoid MLP, Glorot-normal init, zero bias"),
      "steps": steps_axis,
      "results": results,
      "elapsed_s": elapsed,
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "bng_mlp_digits.json"), "w") as f:
    json.dump(payload, f, indent=1)
  table = markdown_table(payload)
  with open(os.path.join(out_dir, "bng_mlp_digits.md"), "w") as f:
    f.write(table)
  plot(payload, os.path.join(out_dir, "bng_mlp_digits.png"))
  return payload, table


def _final(res, key):
  v = np.asarray(res[key])[:, -1]
  return v.mean(), v.std()


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


def plot(payload, path):
  import matplotlib
  matplotlib.use("Agg")
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
  parser.add_argument("--steps", type=int, default=None)
  args = parser.parse_args(argv)
  cfg = dict(QUICK if args.quick else FULL)
  if args.steps:
    cfg["steps"] = args.steps
  if args.quick and args.out is None:
    parser.error("--quick needs --out (never overwrite the full results)")
  out = args.out or os.path.join(os.path.dirname(__file__), "results")
  payload, table = run(cfg, out)
  print(table)
  print(f"wrote {out}/bng_mlp_digits.{{json,md,png}} in "
        f"{payload['elapsed_s']:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())

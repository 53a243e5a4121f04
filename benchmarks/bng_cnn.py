"""BNG Tables 1-2 in small: a residual CNN with BatchNorm on scikit-learn digits.

Yu et al. (2017), "Block-Normalized Gradient Method", Tables 1-2, train
ResNets on CIFAR with SGD-momentum and Adam, each in four forms:

* plain: the base optimizer;
* CLIP: each layer's gradient clipped to norm ``CLIP_NORM`` first
  (``normopt.clip_block_norm``);
* NG: each layer's gradient normalized to unit norm (``sgd_ng``/``adam_ng``);
* NG_adap: each layer's gradient scaled to ``alpha * ||w_layer||``
  (``sgd_ngadap``/``adam_ngadap``, ``alpha = 0.02``).

Here the model is a small residual CNN with BatchNorm (Flax Linen) and the data
are the 8x8 handwritten digits of scikit-learn (1,437 train / 360 test images).
Every form of a base uses the base's usual step size (SGDM 0.1, Adam 1e-3),
divided by 10 at 50% and 75% of training, as the paper's "constant step size
with occasional decay". Adam's default is slow on this short budget, so the
Adam family is run a second time at 1e-2 (the rows marked ``@1e-2``). Three
seeds per method (the seed sets the weight initialisation and the minibatch
order; the train/test split is fixed).

Run from the repository root::

  python benchmarks/bng_cnn.py            # full: writes benchmarks/results/bng_cnn.*
  python benchmarks/bng_cnn.py --quick --out /tmp/bng   # a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import normopt

SGD_LR = 0.1
ADAM_LR = 1e-3
ADAM_LR_HIGH = 1e-2  # a sensitivity check: Adam's default is slow here
ALPHA = 0.02
CLIP_NORM = 1.0
MOMENTUM = 0.9


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


def make_optimizers(total_steps: int) -> dict[str, optax.GradientTransformation]:
  """The eight optimizers of Tables 1-2, each with its step-decay schedule."""

  def sched(lr):
    return optax.piecewise_constant_schedule(
        lr, {total_steps // 2: 0.1, (3 * total_steps) // 4: 0.1})

  sgd = lambda: optax.sgd(sched(SGD_LR), momentum=MOMENTUM)
  adam = lambda lr=ADAM_LR: optax.adam(sched(lr))
  hi = ADAM_LR_HIGH
  return {
      "SGDM": sgd(),
      "SGDM-CLIP": optax.chain(normopt.clip_block_norm(CLIP_NORM), sgd()),
      "SGDM-NG": normopt.sgd_ng(sched(SGD_LR), momentum=MOMENTUM),
      "SGDM-NG_adap": normopt.sgd_ngadap(
          sched(SGD_LR), momentum=MOMENTUM, alpha=ALPHA),
      "Adam": adam(),
      "Adam-CLIP": optax.chain(normopt.clip_block_norm(CLIP_NORM), adam()),
      "Adam-NG": normopt.adam_ng(sched(ADAM_LR)),
      "Adam-NG_adap": normopt.adam_ngadap(sched(ADAM_LR), alpha=ALPHA),
      "Adam@1e-2": adam(hi),
      "Adam-CLIP@1e-2": optax.chain(normopt.clip_block_norm(CLIP_NORM),
                                    adam(hi)),
      "Adam-NG@1e-2": normopt.adam_ng(sched(hi)),
      "Adam-NG_adap@1e-2": normopt.adam_ngadap(sched(hi), alpha=ALPHA),
  }


def load_data():
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(
      x, y, test_size=0.2, random_state=0, stratify=y)
  mean, std = x_tr.mean(), x_tr.std()
  return ((x_tr - mean) / std, y_tr), ((x_te - mean) / std, y_te)


def make_init(model, x_example):
  """Returns jitted ``init(seed) -> (params, batch_stats, data_key)``."""

  @jax.jit
  def init(seed):
    k_init, k_data = jax.random.split(jax.random.PRNGKey(seed))
    variables = model.init(k_init, x_example, train=False)
    return variables["params"], variables["batch_stats"], k_data

  return init


def make_epoch(model, tx, train, test, batch_size):
  """Returns a jitted ``epoch(state) -> (state, (train loss, test error))``."""
  x_tr, y_tr = (jnp.asarray(a) for a in train)
  x_te, y_te = (jnp.asarray(a) for a in test)
  n = x_tr.shape[0]
  steps = n // batch_size

  def loss_fn(params, stats, x, y):
    logits, new = model.apply(
        {"params": params, "batch_stats": stats}, x, train=True,
        mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, new["batch_stats"]

  @jax.jit
  def epoch(state):
    params, stats, opt_state, key = state
    key, k_perm = jax.random.split(key)
    perm = jax.random.permutation(k_perm, n)[: steps * batch_size]
    perm = perm.reshape(steps, batch_size)

    def step(carry, idx):
      params, stats, opt_state = carry
      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, stats, x_tr[idx], y_tr[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, stats, opt_state), loss

    (params, stats, opt_state), losses = jax.lax.scan(
        step, (params, stats, opt_state), perm)
    logits = model.apply(
        {"params": params, "batch_stats": stats}, x_te, train=False)
    test_err = jnp.mean(jnp.argmax(logits, -1) != y_te)
    return (params, stats, opt_state, key), (jnp.mean(losses), test_err)

  return epoch


def _mean_std(a):
  a = np.asarray(a, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _compare(res, better, worse):
  """Verdict on "``better`` has lower final test error than ``worse``"."""
  a = np.asarray(res[better]["final_test_error"])
  b = np.asarray(res[worse]["final_test_error"])
  diff = float(a.mean() - b.mean())
  se = float(np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)) if a.size > 1 else 0.0
  if diff < -max(se, 1e-12):
    verdict = "holds"
  elif diff > max(se, 1e-12):
    verdict = "does not hold"
  else:
    verdict = "within noise"
  return {"better": better, "worse": worse, "diff": diff, "se": se,
          "verdict": verdict}


CLAIMS = [
    ("SGDM-NG beats SGDM", "SGDM-NG", "SGDM"),
    ("SGDM-NG_adap beats SGDM", "SGDM-NG_adap", "SGDM"),
    ("SGDM-NG beats SGDM-CLIP", "SGDM-NG", "SGDM-CLIP"),
    ("Adam-NG beats Adam", "Adam-NG", "Adam"),
    ("Adam-NG_adap beats Adam", "Adam-NG_adap", "Adam"),
    ("on CNNs SGDM-NG beats Adam-NG", "SGDM-NG", "Adam-NG"),
    ("Adam-NG beats Adam (lr 1e-2)", "Adam-NG@1e-2", "Adam@1e-2"),
    ("Adam-NG_adap beats Adam (lr 1e-2)", "Adam-NG_adap@1e-2", "Adam@1e-2"),
    ("on CNNs SGDM-NG beats Adam-NG (lr 1e-2)", "SGDM-NG", "Adam-NG@1e-2"),
]


def write_outputs(result, out_dir):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "bng_cnn.json"), "w") as f:
    json.dump(result, f, indent=1)

  res = result["methods"]
  epochs = np.arange(1, result["config"]["epochs"] + 1)
  families = {
      "SGDM": [n for n in res if n.startswith("SGDM")],
      f"Adam (lr {ADAM_LR:g})": [
          n for n in res if n.startswith("Adam") and "@" not in n],
      f"Adam (lr {ADAM_LR_HIGH:g})": [n for n in res if "@" in n],
  }
  families = {k: v for k, v in families.items() if v}
  fig, axes = plt.subplots(2, len(families), figsize=(5.5 * len(families), 8),
                           sharex=True, squeeze=False)
  for col, (family, members) in enumerate(families.items()):
    for name in members:
      r = res[name]
      for row, key in enumerate(("train_loss", "test_error")):
        curves = np.asarray(r[key])
        m, s = curves.mean(0), curves.std(0)
        ax = axes[row, col]
        ax.plot(epochs, m, label=name)
        ax.fill_between(epochs, m - s, m + s, alpha=0.2)
    axes[0, col].set_yscale("log")
    axes[0, col].set_title(f"{family} family: training loss")
    axes[1, col].set_title(f"{family} family: test error")
    worst = max(np.mean(res[n]["final_test_error"]) for n in members)
    axes[1, col].set_ylim(0, min(1.0, max(0.1, 2 * worst)))
    axes[1, col].set_xlabel("epoch")
    if axes[0, col].get_legend_handles_labels()[0]:
      axes[0, col].legend()
  fig.suptitle("BNG Tables 1-2 in small: ResNet-BN on digits "
               f"(mean ± std over {result['config']['seeds']} seeds)")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "bng_cnn.png"), dpi=110)
  plt.close(fig)

  cfg = result["config"]
  lines = [
      "# BNG Tables 1-2 in small: residual CNN + BN on digits",
      "",
      f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, "
      f"{len(cfg['seed_list'])} seeds, step sizes: SGDM forms {SGD_LR}, "
      f"Adam forms {ADAM_LR} (and {ADAM_LR_HIGH} for the rows marked @1e-2), "
      f"all x0.1 at 50% and 75% of training, NG_adap alpha={ALPHA}, "
      f"CLIP layer norm {CLIP_NORM}. Test set: {cfg['n_test']} images.",
      "",
      "| method | test error % (mean ± std) | final train loss | seconds |",
      "|---|---|---|---|",
  ]
  for name, r in res.items():
    m, s = _mean_std(np.asarray(r["final_test_error"]) * 100)
    tl, _ = _mean_std(r["final_train_loss"])
    lines.append(f"| {name} | {m:.2f} ± {s:.2f} | {tl:.2e} | {r['seconds']:.1f} |")
  lines += ["", "| claim | difference in test error (pp) | ± se | verdict |",
            "|---|---|---|---|"]
  for c in result["claims"]:
    lines.append(f"| {c['claim']} | {100 * c['diff']:+.2f} | "
                 f"{100 * c['se']:.2f} | {c['verdict']} |")
  lines += ["", "Verdict rule: a claim holds when the mean difference is "
            "below minus one standard error of the difference (3 seeds); "
            "it does not hold when above plus one; otherwise within noise.",
            "", f"Ran on: {cfg['machine']}."]
  with open(os.path.join(out_dir, "bng_cnn.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="a few epochs, one seed, narrow model (seconds)")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--methods", nargs="*", default=None,
                      help="subset of methods (default: all; --quick: two)")
  args = parser.parse_args(argv)

  epochs = args.epochs or (2 if args.quick else 12)
  seeds = [0] if args.quick else [0, 1, 2]
  width = 4 if args.quick else 8
  batch_size = 64
  train, test = load_data()
  steps_per_epoch = train[0].shape[0] // batch_size
  model = ResNet(width=width)
  txs = make_optimizers(epochs * steps_per_epoch)
  names = args.methods or (["SGDM", "SGDM-NG"] if args.quick else list(txs))
  txs = {k: txs[k] for k in names}

  result = {
      "config": {
          "epochs": epochs, "seeds": len(seeds), "seed_list": seeds,
          "width": width, "batch_size": batch_size,
          "steps_per_epoch": steps_per_epoch,
          "n_train": int(train[0].shape[0]), "n_test": int(test[0].shape[0]),
          "sgd_lr": SGD_LR, "adam_lr": ADAM_LR,
          "adam_lr_high": ADAM_LR_HIGH, "alpha": ALPHA,
          "clip_norm": CLIP_NORM, "momentum": MOMENTUM, "quick": args.quick,
          "machine": f"{platform.machine()} CPU x{os.cpu_count()} "
                     f"(jax {jax.__version__}, {jax.default_backend()})",
      },
      "methods": {},
  }
  init = make_init(model, jnp.asarray(train[0][:2]))
  with tqdm(total=len(txs) * len(seeds) * epochs, desc="bng_cnn") as bar:
    for name, tx in txs.items():
      bar.set_postfix_str(name)
      epoch = make_epoch(model, tx, train, test, batch_size)
      t0 = time.perf_counter()
      losses, errs = [], []
      for seed in seeds:
        params, stats, key = init(seed)
        state = (params, stats, tx.init(params), key)
        curve = []
        for _ in range(epochs):
          state, metrics = epoch(state)
          curve.append(metrics)
          bar.update()
        loss, err = np.asarray(jax.device_get(curve)).T
        losses.append(loss)
        errs.append(err)
      losses, errs = np.stack(losses), np.stack(errs)  # (seeds, epochs)
      result["methods"][name] = {
          "train_loss": losses.tolist(),
          "test_error": errs.tolist(),
          "final_train_loss": losses[:, -1].tolist(),
          "final_test_error": errs[:, -1].tolist(),
          "seconds": time.perf_counter() - t0,
      }
  result["claims"] = [
      dict(claim=c, **_compare(result["methods"], a, b))
      for c, a, b in CLAIMS if a in txs and b in txs]
  write_outputs(result, args.out)
  for c in result["claims"]:
    print(f"{c['claim']}: {100 * c['diff']:+.2f}pp ± {100 * c['se']:.2f} "
          f"-> {c['verdict']}")
  return result


if __name__ == "__main__":
  main()

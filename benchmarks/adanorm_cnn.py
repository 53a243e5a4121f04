"""AdaNorm Table 1 and Figure 3 in small: a conv + BN CNN on scikit-learn digits.

Dubey et al. (WACV 2023), "AdaNorm: Adaptive Gradient Norm Correction based
Optimizer for CNNs", train VGG16/ResNet18/ResNet50 on CIFAR10/100 and
TinyImageNet with Adam, diffGrad, RAdam and AdaBelief, each with and without
the AdaNorm gradient-norm correction (Table 1), and plot the norm of the
gradient that enters the first moment during training (Figure 3): with the
correction it stays higher, as it is lifted to the EMA of past norms.

Here: a small CNN (three 3x3 conv + BatchNorm + ReLU layers, global average
pool, dense) in Flax Linen on the 8x8 digits of scikit-learn (1,437 train /
360 test images, fixed stratified split). Each of the eight optimizers runs
with the paper's common step size 1e-3 (x0.1 at 50% and 75% of training),
gamma=0.95 and per-tensor norms ("leaf" blocks, as the official code), three
seeds (weight initialisation and minibatch order; the split is fixed).

"Gradient norm entering the first moment" at a step = the mean over the
network's parameter tensors of the norm of the first-moment input: ``‖g‖`` for
a base optimizer, ``‖s‖ = max(e, ‖g‖)`` (0 for a zero ``g``) for its Norm
variant, read from the optimizer state.

Run from the repository root::

  python benchmarks/adanorm_cnn.py                        # full: benchmarks/results/adanorm_cnn.*
  python benchmarks/adanorm_cnn.py --quick --out /tmp/an  # a few seconds
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

LR = 1e-3
GAMMA = 0.95
PAIRS = ("Adam", "diffGrad", "RAdam", "AdaBelief")


class CNN(nn.Module):
  """conv(w) - conv(2w, stride 2) - conv(2w), each + BN + ReLU; pool; dense."""

  width: int = 16

  @nn.compact
  def __call__(self, x, train: bool):
    for feats, stride in ((self.width, 1), (2 * self.width, 2),
                          (2 * self.width, 1)):
      x = nn.Conv(feats, (3, 3), stride, use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(10)(x)


def make_optimizers(total_steps: int) -> dict[str, optax.GradientTransformation]:
  """Base and Norm variant of each of the four optimizers, same schedule."""
  lr = optax.piecewise_constant_schedule(
      LR, {total_steps // 2: 0.1, (3 * total_steps) // 4: 0.1})
  return {
      "Adam": optax.adam(lr),
      "AdamNorm": normopt.adam_norm(lr, gamma=GAMMA),
      "diffGrad": normopt.diffgrad(lr),
      "diffGradNorm": normopt.diffgrad_norm(lr, gamma=GAMMA),
      "RAdam": optax.radam(lr),
      "RAdamNorm": normopt.radam_norm(lr, gamma=GAMMA),
      # AdaBelief with the official code's eps (1e-8), in optax's convention.
      "AdaBelief": optax.adabelief(lr, eps=1e-8, eps_root=1e-16),
      "AdaBeliefNorm": normopt.adabelief_norm(
          lr, eps=1e-8, eps_root=1e-16, gamma=GAMMA),
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


def first_moment_norms(grads, opt_state):
  """Means over tensors: ‖g‖, ‖first-moment input‖ (‖s‖ or ‖g‖), corrected."""
  g_norms = [jnp.ravel(n)[0] for n in
             jax.tree.leaves(normopt.block_norms(grads, "leaf"))]
  raw = jnp.mean(jnp.stack(g_norms))
  inner = opt_state[0]
  if not isinstance(inner, normopt.ScaleByAdaNormState):
    return raw, raw, jnp.zeros([])
  e = [jnp.ravel(x)[0] for x in jax.tree.leaves(inner.e)]
  s = [jnp.where(n > 0, jnp.maximum(ei, n), 0.0) for ei, n in zip(e, g_norms)]
  on = [(ei > n).astype(jnp.float32) for ei, n in zip(e, g_norms)]
  return raw, jnp.mean(jnp.stack(s)), jnp.mean(jnp.stack(on))


def make_epoch(model, tx, train, test, batch_size):
  """Jitted ``epoch(state) -> (state, (losses, raw norms, s norms), test acc)``."""
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
      raw, s, on = first_moment_norms(grads, opt_state)
      return (params, stats, opt_state), (loss, raw, s, on)

    (params, stats, opt_state), per_step = jax.lax.scan(
        step, (params, stats, opt_state), perm)
    logits = model.apply(
        {"params": params, "batch_stats": stats}, x_te, train=False)
    acc = jnp.mean(jnp.argmax(logits, -1) == y_te)
    return (params, stats, opt_state, key), per_step, acc

  return epoch


def _mean_std(a):
  a = np.asarray(a, np.float64)
  return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else 0.0)


def compare(res, base, norm):
  """Verdict on the paper's direction "Norm ≥ base" in final test accuracy."""
  a = np.asarray(res[norm]["final_test_acc"])
  b = np.asarray(res[base]["final_test_acc"])
  diff = float(a.mean() - b.mean())
  se = (float(np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))
        if a.size > 1 else 0.0)
  if diff > se:
    verdict = "holds (Norm higher)"
  elif diff < -se:
    verdict = "does not hold (Norm lower)"
  else:
    verdict = "within noise"
  return {"base": base, "norm": norm, "diff": diff, "se": se,
          "verdict": verdict}


def write_outputs(result, out_dir):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "adanorm_cnn.json"), "w") as f:
    json.dump(result, f, indent=1)

  res = result["methods"]
  cfg = result["config"]
  pairs = [p for p in PAIRS if p in res and p + "Norm" in res]
  fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(4.2 * max(len(pairs), 1), 3.6),
                           squeeze=False)
  for ax, base in zip(axes[0], pairs):
    it = np.arange(1, len(res[base]["first_moment_norm_mean"]) + 1)
    ax.plot(it, res[base]["first_moment_norm_mean"], lw=0.8,
            label=f"{base}: ‖g‖")
    ax.plot(it, res[base + "Norm"]["first_moment_norm_mean"], lw=0.8,
            label=f"{base}Norm: ‖s‖")
    ax.plot(it, res[base + "Norm"]["raw_norm_mean"], lw=0.6, ls=":",
            color="gray", label=f"{base}Norm: ‖g‖")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_title(base)
    ax.legend(fontsize=7)
  axes[0, 0].set_ylabel("mean norm entering the 1st moment")
  fig.suptitle("AdaNorm Fig. 3 in small: gradient norm entering the first "
               f"moment (CNN-BN on digits, mean of {cfg['seeds']} seeds)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "adanorm_cnn_fig3.png"), dpi=110)
  plt.close(fig)

  lines = [
      "# AdaNorm Table 1 in small: CNN + BN on digits",
      "",
      f"{cfg['epochs']} epochs x {cfg['steps_per_epoch']} steps, batch "
      f"{cfg['batch_size']}, width {cfg['width']}, step size {LR} (x0.1 at "
      f"50% and 75%), gamma={GAMMA}, per-tensor norms, "
      f"{len(cfg['seed_list'])} seeds. Test set: {cfg['n_test']} images. "
      "Final-epoch test accuracy, mean ± std over seeds.",
      "",
      "| optimizer | base test acc % | Norm test acc % | Norm − base (pp) | ± se | paper's direction (Norm ≥ base) | train loss base → Norm |",
      "|---|---|---|---|---|---|---|",
  ]
  for c in result["claims"]:
    mb, sb = _mean_std(np.asarray(res[c["base"]]["final_test_acc"]) * 100)
    mn, sn = _mean_std(np.asarray(res[c["norm"]]["final_test_acc"]) * 100)
    lb, _ = _mean_std(res[c["base"]]["final_train_loss"])
    ln, _ = _mean_std(res[c["norm"]]["final_train_loss"])
    lines.append(
        f"| {c['base']} | {mb:.2f} ± {sb:.2f} | {mn:.2f} ± {sn:.2f} | "
        f"{100 * c['diff']:+.2f} | {100 * c['se']:.2f} | {c['verdict']} | "
        f"{lb:.3f} → {ln:.3f} |")
  lines += [
      "", "| optimizer | final train loss | mean ‖first-moment input‖, last "
      "epoch | fraction of steps x tensors corrected | seconds (all seeds, with "
      "compilation) |",
      "|---|---|---|---|---|"]
  for name, r in res.items():
    tl, _ = _mean_std(r["final_train_loss"])
    frac = r.get("corrected_fraction")
    frac = "–" if frac is None else f"{frac:.2f}"
    last = np.mean(r["first_moment_norm_mean"][-cfg["steps_per_epoch"]:])
    lines.append(f"| {name} | {tl:.2e} | {last:.3g} | {frac} | "
                 f"{r['seconds']:.1f} |")
  lines += [
      "", "Train loss: mean over the last epoch's minibatches, mean over "
      "seeds.", "", "Verdict rule: the direction holds when Norm − base exceeds one "
      "standard error of the difference of the means (3 seeds), does not "
      "hold when below minus one, and is within noise otherwise.",
      "", f"Ran on: {cfg['machine']}."]
  with open(os.path.join(out_dir, "adanorm_cnn.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="one epoch, one seed, narrow model (seconds)")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--pairs", nargs="*", default=None,
                      help=f"subset of {PAIRS} (default: all; --quick: Adam)")
  args = parser.parse_args(argv)

  epochs = args.epochs or (1 if args.quick else 30)
  seeds = [0] if args.quick else [0, 1, 2]
  width = 4 if args.quick else 16
  batch_size = 64
  pairs = args.pairs or (["Adam"] if args.quick else list(PAIRS))
  train, test = load_data()
  steps_per_epoch = train[0].shape[0] // batch_size
  model = CNN(width=width)
  txs = make_optimizers(epochs * steps_per_epoch)
  txs = {k: v for k, v in txs.items() if k.removesuffix("Norm") in pairs}

  result = {
      "config": {
          "epochs": epochs, "seeds": len(seeds), "seed_list": seeds,
          "width": width, "batch_size": batch_size,
          "steps_per_epoch": steps_per_epoch, "lr": LR, "gamma": GAMMA,
          "n_train": int(train[0].shape[0]), "n_test": int(test[0].shape[0]),
          "quick": args.quick,
          "machine": f"{platform.machine()} CPU x{os.cpu_count()} "
                     f"(jax {jax.__version__}, {jax.default_backend()}), "
                     "shared with other jobs",
      },
      "methods": {},
  }
  init = make_init(model, jnp.asarray(train[0][:2]))
  with tqdm(total=len(txs) * len(seeds) * epochs, desc="adanorm_cnn") as bar:
    for name, tx in txs.items():
      bar.set_postfix_str(name)
      epoch = make_epoch(model, tx, train, test, batch_size)
      t0 = time.perf_counter()
      accs, losses, raws, ss, ons = [], [], [], [], []
      for seed in seeds:
        params, stats, key = init(seed)
        state = (params, stats, tx.init(params), key)
        acc_curve, per_steps = [], []
        for _ in range(epochs):
          state, per_step, acc = epoch(state)
          per_steps.append(per_step)
          acc_curve.append(acc)
          bar.update()
        loss, raw, s, on = (
            np.concatenate([np.asarray(p[i]) for p in per_steps])
            for i in range(4))
        accs.append(np.asarray(acc_curve))
        losses.append(loss)
        raws.append(raw)
        ss.append(s)
        ons.append(on)
      accs, losses = np.stack(accs), np.stack(losses)
      raws, ss = np.stack(raws), np.stack(ss)  # (seeds, iterations)
      final_loss = losses[:, -steps_per_epoch:].mean(1)
      result["methods"][name] = {
          "test_acc": accs.tolist(),
          "final_test_acc": accs[:, -1].tolist(),
          "final_train_loss": final_loss.tolist(),
          "raw_norm_mean": raws.mean(0).tolist(),
          "first_moment_norm_mean": ss.mean(0).tolist(),
          "corrected_fraction": (float(np.mean(ons))
                                 if name.endswith("Norm") else None),
          "seconds": time.perf_counter() - t0,
      }
  result["claims"] = [compare(result["methods"], p, p + "Norm")
                      for p in PAIRS if p in txs and p + "Norm" in txs]
  write_outputs(result, args.out)
  for c in result["claims"]:
    print(f"{c['norm']} vs {c['base']}: {100 * c['diff']:+.2f}pp ± "
          f"{100 * c['se']:.2f} -> {c['verdict']}")
  return result


if __name__ == "__main__":
  main()

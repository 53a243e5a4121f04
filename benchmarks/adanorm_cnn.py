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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import _common
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


def first_moment_norms(loss, grads, opt_state):
  """Per step: loss and means over tensors of ‖g‖, ‖first-moment input‖ (‖s‖
  or ‖g‖) and of "corrected" (e > ‖g‖)."""
  g_norms = [jnp.ravel(n)[0] for n in
             jax.tree.leaves(normopt.block_norms(grads, "leaf"))]
  raw = jnp.mean(jnp.stack(g_norms))
  inner = opt_state[0]
  if not isinstance(inner, normopt.ScaleByAdaNormState):
    return loss, raw, raw, jnp.zeros([])
  e = [jnp.ravel(x)[0] for x in jax.tree.leaves(inner.e)]
  s = [jnp.where(n > 0, jnp.maximum(ei, n), 0.0) for ei, n in zip(e, g_norms)]
  on = [(ei > n).astype(jnp.float32) for ei, n in zip(e, g_norms)]
  return loss, raw, jnp.mean(jnp.stack(s)), jnp.mean(jnp.stack(on))


def compare(res, base, norm):
  """Verdict on the paper's direction "Norm ≥ base" in final test accuracy."""
  diff, se = _common.diff_se(res[norm]["final_test_acc"],
                             res[base]["final_test_acc"])
  label = {"holds": "holds (Norm higher)", "does not hold":
           "does not hold (Norm lower)"}
  v = _common.verdict(diff, se, lower_is_better=False)
  return {"base": base, "norm": norm, "diff": diff, "se": se,
          "verdict": label.get(v, v)}


def plot(result):
  import matplotlib.pyplot as plt

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
  return fig


def markdown(result):
  res = result["methods"]
  cfg = result["config"]
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
    mb, sb = _common.mean_std(np.asarray(res[c["base"]]["final_test_acc"]) * 100)
    mn, sn = _common.mean_std(np.asarray(res[c["norm"]]["final_test_acc"]) * 100)
    lb, _ = _common.mean_std(res[c["base"]]["final_train_loss"])
    ln, _ = _common.mean_std(res[c["norm"]]["final_train_loss"])
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
    tl, _ = _common.mean_std(r["final_train_loss"])
    frac = r.get("corrected_fraction")
    frac = "–" if frac is None else f"{frac:.2f}"
    last = np.mean(r["first_moment_norm_mean"][-cfg["steps_per_epoch"]:])
    lines.append(f"| {name} | {tl:.2e} | {last:.3g} | {frac} | "
                 f"{r['seconds']:.1f} |")
  lines += [
      "", "Train loss: mean over the last epoch's minibatches, mean over "
      "seeds.", "", "Verdict rule: the direction holds when Norm − base exceeds one "
      "standard error of the difference of the means (3 seeds), does not "
      "hold when below minus one, and is within noise otherwise."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = _common.make_parser(
      __doc__, "one epoch, one seed, narrow model (seconds)")
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--pairs", nargs="*", default=None,
                      help=f"subset of {PAIRS} (default: all; --quick: Adam)")
  args = parser.parse_args(argv)
  out = _common.output_dir(parser, args, "adanorm_cnn",
                           partial=bool(args.epochs or args.pairs))

  epochs = args.epochs or (1 if args.quick else 30)
  seeds = [0] if args.quick else [0, 1, 2]
  width = 4 if args.quick else 16
  batch_size = 64
  pairs = args.pairs or (["Adam"] if args.quick else list(PAIRS))
  data = _common.load_digits(images=True)
  steps_per_epoch = data.x_train.shape[0] // batch_size
  model = CNN(width=width)
  txs = make_optimizers(epochs * steps_per_epoch)
  txs = {k: v for k, v in txs.items() if k.removesuffix("Norm") in pairs}

  result = {
      "config": {
          "epochs": epochs, "seeds": len(seeds), "seed_list": seeds,
          "width": width, "batch_size": batch_size,
          "steps_per_epoch": steps_per_epoch, "lr": LR, "gamma": GAMMA,
          "n_train": int(data.x_train.shape[0]),
          "n_test": int(data.x_test.shape[0]), "data": _common.DIGITS_CONVENTION,
          "quick": args.quick, "machine": _common.machine_info(),
      },
      "methods": {},
  }
  init = _common.make_flax_init(model, jnp.asarray(data.x_train[:2]))
  with tqdm(total=len(txs) * len(seeds) * epochs, desc="adanorm_cnn",
            disable=args.quiet) as bar:
    for name, tx in txs.items():
      bar.set_postfix_str(name)
      run = _common.train_flax(model, tx, data, batch_size, epochs, seeds,
                               step_metrics=first_moment_norms, init=init,
                               bar=bar)
      losses, raws, ss, ons = run.per_step  # each (seeds, iterations)
      accs = run.evaluation  # (seeds, epochs)
      final_loss = losses[:, -steps_per_epoch:].mean(1)
      result["methods"][name] = {
          "test_acc": accs.tolist(),
          "final_test_acc": accs[:, -1].tolist(),
          "final_train_loss": final_loss.tolist(),
          "raw_norm_mean": raws.mean(0).tolist(),
          "first_moment_norm_mean": ss.mean(0).tolist(),
          "corrected_fraction": (float(np.mean(ons))
                                 if name.endswith("Norm") else None),
          "seconds": run.seconds,
      }
  result["claims"] = [compare(result["methods"], p, p + "Norm")
                      for p in PAIRS if p in txs and p + "Norm" in txs]
  _common.write_results(out, "adanorm_cnn", result, markdown(result),
                        {"adanorm_cnn_fig3.png": plot})
  for c in result["claims"]:
    print(f"{c['norm']} vs {c['base']}: {100 * c['diff']:+.2f}pp ± "
          f"{100 * c['se']:.2f} -> {c['verdict']}")
  return result


if __name__ == "__main__":
  main()

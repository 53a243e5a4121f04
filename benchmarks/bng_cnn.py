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

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import _common
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


def _compare(res, better, worse):
  """Verdict on "``better`` has lower final test error than ``worse``"."""
  diff, se = _common.diff_se(res[better]["final_test_error"],
                             res[worse]["final_test_error"])
  return {"better": better, "worse": worse, "diff": diff, "se": se,
          "verdict": _common.verdict(diff, se)}


def test_error(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) != labels)


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


def plot(result):
  import matplotlib.pyplot as plt

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
        m, s = _common.mean_std(r[key], axis=0)
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
  return fig


def markdown(result):
  res = result["methods"]
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
    m, s = _common.mean_std(np.asarray(r["final_test_error"]) * 100)
    tl, _ = _common.mean_std(r["final_train_loss"])
    lines.append(f"| {name} | {m:.2f} ± {s:.2f} | {tl:.2e} | {r['seconds']:.1f} |")
  lines += ["", "| claim | difference in test error (pp) | ± se | verdict |",
            "|---|---|---|---|"]
  for c in result["claims"]:
    lines.append(f"| {c['claim']} | {100 * c['diff']:+.2f} | "
                 f"{100 * c['se']:.2f} | {c['verdict']} |")
  lines += ["", "Verdict rule: a claim holds when the mean difference is "
            "below minus one standard error of the difference (3 seeds); "
            "it does not hold when above plus one; otherwise within noise."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = _common.make_parser(
      __doc__, "a few epochs, one seed, narrow model (seconds)")
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--methods", nargs="*", default=None,
                      help="subset of methods (default: all; --quick: two)")
  args = parser.parse_args(argv)
  out = _common.output_dir(parser, args, "bng_cnn",
                           partial=bool(args.epochs or args.methods))

  epochs = args.epochs or (2 if args.quick else 12)
  seeds = [0] if args.quick else [0, 1, 2]
  width = 4 if args.quick else 8
  batch_size = 64
  data = _common.load_digits(images=True)
  steps_per_epoch = data.x_train.shape[0] // batch_size
  model = ResNet(width=width)
  txs = make_optimizers(epochs * steps_per_epoch)
  names = args.methods or (["SGDM", "SGDM-NG"] if args.quick else list(txs))
  txs = {k: txs[k] for k in names}

  result = {
      "config": {
          "epochs": epochs, "seeds": len(seeds), "seed_list": seeds,
          "width": width, "batch_size": batch_size,
          "steps_per_epoch": steps_per_epoch,
          "n_train": int(data.x_train.shape[0]),
          "n_test": int(data.x_test.shape[0]), "data": _common.DIGITS_CONVENTION,
          "sgd_lr": SGD_LR, "adam_lr": ADAM_LR,
          "adam_lr_high": ADAM_LR_HIGH, "alpha": ALPHA,
          "clip_norm": CLIP_NORM, "momentum": MOMENTUM, "quick": args.quick,
          "machine": _common.machine_info(),
      },
      "methods": {},
  }
  init = _common.make_flax_init(model, jnp.asarray(data.x_train[:2]))
  with tqdm(total=len(txs) * len(seeds) * epochs, desc="bng_cnn",
            disable=args.quiet) as bar:
    for name, tx in txs.items():
      bar.set_postfix_str(name)
      run = _common.train_flax(model, tx, data, batch_size, epochs, seeds,
                               evaluate=test_error, init=init, bar=bar)
      losses, errs = run.per_epoch, run.evaluation  # (seeds, epochs)
      result["methods"][name] = {
          "train_loss": losses.tolist(),
          "test_error": errs.tolist(),
          "final_train_loss": losses[:, -1].tolist(),
          "final_test_error": errs[:, -1].tolist(),
          "seconds": run.seconds,
      }
  result["claims"] = [
      dict(claim=c, **_compare(result["methods"], a, b))
      for c, a, b in CLAIMS if a in txs and b in txs]
  _common.write_results(out, "bng_cnn", result, markdown(result),
                        {"bng_cnn.png": plot})
  for c in result["claims"]:
    print(f"{c['claim']}: {100 * c['diff']:+.2f}pp ± {100 * c['se']:.2f} "
          f"-> {c['verdict']}")
  return result


if __name__ == "__main__":
  main()

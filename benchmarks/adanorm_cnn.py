"""AdaNorm Table 1 and Figure 3 in small: a conv + BN CNN on scikit-learn digits.

Dubey et al. (WACV 2023), "AdaNorm: Adaptive Gradient Norm Correction based
Optimizer for CNNs", train VGG16/ResNet18/ResNet50 on CIFAR10/100 and
TinyImageNet with Adam, diffGrad, RAdam and AdaBelief, each with and without
the AdaNorm gradient-norm correction (Table 1: each Norm variant reaches a
higher test accuracy than its base), and plot the norm of the gradient that
enters the first moment during training (Figure 3): with the correction it
stays higher, as it is lifted to the EMA of past norms.

Here: a small CNN (three 3x3 conv + BatchNorm + ReLU layers, global average
pool, dense) in Flax Linen on the 8x8 digits of scikit-learn (1,437 train /
360 test images, fixed stratified split). Each of the eight optimizers gets
its OWN step size by the shared protocol (``_common.TUNING_RULE``): a log grid
about sqrt(10) apart centred on the paper's 1e-3, two selection seeds trained
on the training set minus a 20% validation split, the lowest final
validation loss wins (the grid widens while the choice is at an edge); then
five fresh seeds train at the chosen step size on the whole training set and
are reported on the test set. Every run decays its step size x0.1 at 50% and
75% of its steps (the paper's schedule, applied to the traced step size);
gamma=0.95 and per-tensor norms ("leaf" blocks, as the official code). All
step sizes and seeds of one optimizer train in one ``jit(vmap)``
(``_common.make_flax_vmapped_run``).

"Gradient norm entering the first moment" at a step = the mean over the
network's parameter tensors of the norm of the first-moment input: ``‖g‖`` for
a base optimizer, ``‖s‖ = max(e, ‖g‖)`` (0 for a zero ``g``) for its Norm
variant, read from the optimizer state (final runs only).

Run from the repository root::

  python benchmarks/adanorm_cnn.py                        # full: benchmarks/results/adanorm_cnn.*
  python benchmarks/adanorm_cnn.py --quick --out /tmp/an  # seconds
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import _common
import normopt

LR_CENTER = 1e-3  # the paper's step size: the centre of every grid
GAMMA = 0.95
PAIRS = ("Adam", "diffGrad", "RAdam", "AdaBelief")
EPOCHS = 30
BATCH = 64
WIDTH = 16
PAPER = ("Table 1: the Norm variant has a higher test accuracy than its base "
         "for every model (VGG16, ResNet18, ResNet50) and dataset (CIFAR10, "
         "CIFAR100, TinyImageNet)")
PAPER_LOSS = ("Fig. 3 / Sec. 4: the corrected, higher gradient norm in the "
              "first moment gives better convergence (no train-loss table)")


class PatchConv(nn.Module):
  """A bias-free 3x3 convolution with "SAME" padding, as an im2col matmul.

  The same function and the same initialization (``lecun_normal`` on a
  ``(3, 3, in, out)`` kernel) as ``nn.Conv(feats, (3, 3), stride,
  use_bias=False)``; only the lowering differs. Under ``vmap`` over
  parameters (every step size and seed in one program) XLA turns a
  convolution with batched kernels into a grouped convolution, about 6x
  slower on this CPU than the batched matmul this module becomes.
  """

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    c, s, size = x.shape[-1], self.stride, x.shape[1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, c, self.features))
    out = -(-size // s)
    pad = max((out - 1) * s + 3 - size, 0)
    lo = pad // 2
    x = jnp.pad(x, ((0, 0), (lo, pad - lo), (lo, pad - lo), (0, 0)))
    end = (out - 1) * s + 1
    cols = [x[:, i:i + end:s, j:j + end:s, :] for i in range(3)
            for j in range(3)]
    return jnp.concatenate(cols, -1) @ kernel.reshape(9 * c, self.features)


class CNN(nn.Module):
  """conv(w) - conv(2w, stride 2) - conv(2w), each + BN + ReLU; pool; dense."""

  width: int = 16

  @nn.compact
  def __call__(self, x, train: bool):
    for feats, stride in ((self.width, 1), (2 * self.width, 2),
                          (2 * self.width, 1)):
      x = PatchConv(feats, stride)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(10)(x)


def _fast_init_rng():
  """Context for tracing a run: JAX's pre-0.5 threefry layout.

  ``make_flax_vmapped_run`` initializes the weights inside the vmapped
  program (``PRNGKey(seed)``); with the default partitionable threefry that
  part alone takes ~10 s of CPU to compile here, ~2 s with this layout. Same
  distributions, other numbers; every optimizer and step size still starts
  from the same weights for the same seed.
  """
  return jax.threefry_partitionable(False)


def make_factory(name: str, total_steps: int):
  """``lr -> optimizer`` for ``name``: the step size (traced) x0.1 at 50% and
  75% of ``total_steps``, the same schedule for every optimizer."""

  def factory(lr):
    sched = optax.piecewise_constant_schedule(
        lr, {total_steps // 2: 0.1, (3 * total_steps) // 4: 0.1})
    return {
        "Adam": lambda: optax.adam(sched),
        "AdamNorm": lambda: normopt.adam_norm(sched, gamma=GAMMA),
        "diffGrad": lambda: normopt.diffgrad(sched),
        "diffGradNorm": lambda: normopt.diffgrad_norm(sched, gamma=GAMMA),
        "RAdam": lambda: optax.radam(sched),
        "RAdamNorm": lambda: normopt.radam_norm(sched, gamma=GAMMA),
        # AdaBelief with the official code's eps (1e-8), in optax's convention.
        "AdaBelief": lambda: optax.adabelief(sched, eps=1e-8, eps_root=1e-16),
        "AdaBeliefNorm": lambda: normopt.adabelief_norm(
            sched, eps=1e-8, eps_root=1e-16, gamma=GAMMA),
    }[name]()

  return factory


def loss_and_accuracy(logits, labels):
  """Evaluation after every epoch: [cross-entropy, accuracy]."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return jnp.stack([ce, jnp.mean(jnp.argmax(logits, -1) == labels)])


def train_loss_only(loss, grads, opt_state):
  del grads, opt_state
  return loss


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
  s = [jnp.where(n > 0, jnp.maximum(ei, n), 0.0) for ei, n in zip(e, g_norms, strict=True)]
  on = [(ei > n).astype(jnp.float32) for ei, n in zip(e, g_norms, strict=True)]
  return loss, raw, jnp.mean(jnp.stack(s)), jnp.mean(jnp.stack(on))


def tune(name, model, sel_data, epochs, grid, max_widen, pad_widening=False,
         bar=None, compiler_options=None):
  """Phase 1: the step size of ``name`` by validation loss (``tune_lr``).

  The first call trains the whole grid x the selection seeds in one
  ``jit(vmap)``; a widening step trains its one step size in a second
  program, or, with ``pad_widening`` (``--quick``, where compiling costs
  more than the runs), is padded to the grid's pairs (``pairs_per_call``)
  to reuse the first.
  ``compiler_options``: ``jax.jit``'s (``--quick``:
  ``_common.QUICK_COMPILER_OPTIONS``), here and in :func:`final_runs`.
  """
  steps = sel_data.x_train.shape[0] // BATCH
  per_call = len(grid) * len(_common.SELECT_SEEDS) if pad_widening else None
  run = _common.make_flax_vmapped_run(
      model, make_factory(name, epochs * steps), sel_data, BATCH, epochs,
      step_metrics=train_loss_only, evaluate=loss_and_accuracy,
      pairs_per_call=per_call, compiler_options=compiler_options)
  seconds = []

  def evaluate(lrs, seeds):
    with _fast_init_rng():
      out = run(seeds, lrs=list(lrs))
    seconds.append(out.seconds)
    if bar is not None:
      bar.update(len(lrs))
    return out.evaluation[: len(lrs), :, -1, 0]  # final validation loss

  record = _common.tune_lr(evaluate, grid, max_widen=max_widen)
  record["seconds"] = seconds
  return record


def final_runs(name, model, data, epochs, lr, compiler_options=None):
  """Phase 2: the final seeds at the chosen step size, on the test set."""
  steps = data.x_train.shape[0] // BATCH
  run = _common.make_flax_vmapped_run(
      model, make_factory(name, epochs * steps), data, BATCH, epochs,
      step_metrics=first_moment_norms, evaluate=loss_and_accuracy,
      compiler_options=compiler_options)
  with _fast_init_rng():
    out = run(list(_common.FINAL_SEEDS), lrs=[lr])
  losses, raws, ss, ons = (np.asarray(a[0], np.float64) for a in out.per_step)
  ev = np.asarray(out.evaluation[0], np.float64)  # (seeds, epochs, 2)
  return {
      "lr": lr,
      "seeds": list(_common.FINAL_SEEDS),
      "test_loss": ev[..., 0].tolist(),
      "test_acc": ev[..., 1].tolist(),
      "final_test_loss": ev[:, -1, 0].tolist(),
      "final_test_acc": ev[:, -1, 1].tolist(),
      # mean over the last epoch's minibatches, per seed
      "final_train_loss": losses[:, -steps:].mean(1).tolist(),
      "diverged": bool(not np.all(np.isfinite(ev))),
      "raw_norm_mean": raws.mean(0).tolist(),
      "first_moment_norm_mean": ss.mean(0).tolist(),
      "corrected_fraction": (float(np.mean(ons))
                             if name.endswith("Norm") else None),
      "seconds": out.seconds,
  }


def make_claims(res):
  claims = []
  for base in PAIRS:
    norm = base + "Norm"
    if base not in res or norm not in res:
      continue
    a, b = res[norm], res[base]
    claims.append(_common.claim(
        f"{norm} beats {base}", a["final_test_acc"], b["final_test_acc"],
        lower_is_better=False, metric="final test accuracy", paper=PAPER,
        base=base, norm=norm))
    claims.append(_common.claim(
        f"{norm} beats {base}", a["final_train_loss"], b["final_train_loss"],
        lower_is_better=True,
        metric="final train loss (mean over the last epoch's minibatches)",
        paper=PAPER_LOSS, base=base, norm=norm))
  return claims


def plot(result):
  import matplotlib.pyplot as plt

  res = result["methods"]
  pairs = [p for p in PAIRS if p in res and p + "Norm" in res]
  n = max(len(pairs), 1)
  fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 6.8), squeeze=False)
  for col, base in enumerate(pairs):
    ax = axes[0, col]
    norm = base + "Norm"
    it = np.arange(1, len(res[base]["first_moment_norm_mean"]) + 1)
    ax.plot(it, res[base]["first_moment_norm_mean"], lw=0.8,
            label=f"{base} (lr {res[base]['lr']:.3g}): ‖g‖")
    ax.plot(it, res[norm]["first_moment_norm_mean"], lw=0.8,
            label=f"{norm} (lr {res[norm]['lr']:.3g}): ‖s‖")
    ax.plot(it, res[norm]["raw_norm_mean"], lw=0.6, ls=":",
            color="gray", label=f"{norm}: ‖g‖")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_title(base)
    ax.legend(fontsize=7)
    ax = axes[1, col]
    for name in (base, norm):
      t = result["tuning"][name]
      m = [np.inf if v is None else v for v in t["mean_val_loss"]]
      line, = ax.plot(t["grid"], m, "o-", ms=3, label=name)
      ax.plot([t["chosen"]], [min(m)], "*", ms=10, color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step size")
    ax.legend(fontsize=7)
  axes[0, 0].set_ylabel("mean norm entering the 1st moment")
  axes[1, 0].set_ylabel("final validation loss (mean of 2 seeds)")
  fig.suptitle("AdaNorm Fig. 3 in small (top: final runs, mean of "
               f"{len(_common.FINAL_SEEDS)} seeds; bottom: step-size "
               "selection, * = chosen)", fontsize=10)
  return fig


def markdown(result):
  res = result["methods"]
  cfg = result["config"]
  tun = result["tuning"]
  lines = [
      "# AdaNorm Table 1 in small: CNN + BN on digits",
      "",
      f"{cfg['epochs']} epochs, batch {cfg['batch_size']} "
      f"({cfg['steps_per_epoch']} steps per epoch on the whole training set, "
      f"{cfg['selection_steps_per_epoch']} on the selection split), width "
      f"{cfg['width']}; every optimizer at its own step size (grid centred on "
      f"the paper's {cfg['lr_center']:g}), x0.1 at 50% and 75% of the steps, "
      f"gamma={cfg['gamma']}, per-tensor norms. Final runs: "
      f"{len(_common.FINAL_SEEDS)} seeds, test set of {cfg['n_test']} images "
      "(one image = 0.28 pp). Mean ± std over seeds.",
      "",
      "| optimizer | chosen lr | grid | interior | test acc % | test loss | "
      "train loss |",
      "|---|---|---|---|---|---|---|",
  ]
  for name, r in res.items():
    t = tun[name]
    acc = _common.mean_std(np.asarray(r["final_test_acc"]) * 100)
    tl = _common.mean_std(r["final_test_loss"])
    tr = _common.mean_std(r["final_train_loss"])
    interior = "yes" if t["interior"] else f"no (widened {t['widened']}x)"
    lines.append(
        f"| {name} | {t['chosen']:.4g} | {t['grid'][0]:.3g} – "
        f"{t['grid'][-1]:.3g} ({len(t['grid'])}) | {interior} | "
        f"{acc[0]:.2f} ± {acc[1]:.2f} | {tl[0]:.3f} ± {tl[1]:.3f} | "
        f"{tr[0]:.2e} ± {tr[1]:.1e} |")
  lines += ["", "| claim | metric | Norm − base, 95% CI | verdict |",
            "|---|---|---|---|"]
  for c in result["claims"]:
    acc = c["metric"].startswith("final test acc")
    diff = (_common.format_ci(c, scale=100) + " pp" if acc
            else _common.format_ci(c, scale=1e3) + " ×1e-3")
    lines.append(f"| {c['claim']} | {c['metric']} | {diff} | {c['verdict']} |")
  lines += [
      "", f"Paper: {PAPER}. Train loss: {PAPER_LOSS}.", "",
      "| optimizer | mean ‖first-moment input‖, last epoch | fraction of "
      "steps x tensors corrected | seconds: selection / final (with "
      "compilation) |",
      "|---|---|---|---|"]
  for name, r in res.items():
    frac = r.get("corrected_fraction")
    frac = "–" if frac is None else f"{frac:.2f}"
    last = np.mean(r["first_moment_norm_mean"][-cfg["steps_per_epoch"]:])
    lines.append(f"| {name} | {last:.3g} | {frac} | "
                 f"{sum(tun[name]['seconds']):.1f} / {r['seconds']:.1f} |")
  lines += ["", f"Tuning: {_common.TUNING_RULE}", "",
            f"Verdicts: {_common.VERDICT_RULE}", "",
            f"Wall time of the whole run: {result['seconds']:.0f} s."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = _common.make_parser(
      __doc__, "one epoch, narrow model, Adam pair only (seconds)")
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--pairs", nargs="*", default=None,
                      help=f"subset of {PAIRS} (default: all; --quick: Adam)")
  args = parser.parse_args(argv)
  out = _common.output_dir(parser, args, "adanorm_cnn",
                           partial=bool(args.epochs or args.pairs))

  t0 = time.perf_counter()
  epochs = args.epochs or (1 if args.quick else EPOCHS)
  width = 4 if args.quick else WIDTH
  pairs = args.pairs or (["Adam"] if args.quick else list(PAIRS))
  names = [p + s for p in pairs for s in ("", "Norm")]
  grid = _common.log_grid(LR_CENTER)
  max_widen = 3
  data, sel_data = _common.tuning_data(images=True)
  model = CNN(width=width)
  fast = _common.QUICK_COMPILER_OPTIONS if args.quick else None

  result = {
      "config": {
          "epochs": epochs, "width": width, "batch_size": BATCH,
          "steps_per_epoch": data.x_train.shape[0] // BATCH,
          "selection_steps_per_epoch": sel_data.x_train.shape[0] // BATCH,
          "lr_center": LR_CENTER, "grid_start": grid, "max_widen": max_widen,
          "schedule": "x0.1 at 50% and 75% of the steps", "gamma": GAMMA,
          "norm_blocks": "leaf (per tensor)",
          "n_train": int(data.x_train.shape[0]),
          "n_selection_train": int(sel_data.x_train.shape[0]),
          "n_val": int(sel_data.x_test.shape[0]),
          "n_test": int(data.x_test.shape[0]),
          "select_seeds": list(_common.SELECT_SEEDS),
          "final_seeds": list(_common.FINAL_SEEDS),
          "data": _common.DIGITS_CONVENTION + f"; validation split "
                  f"{_common.VAL_FRACTION:.0%} of the training images "
                  "(stratified, random_state=0) for step-size selection",
          "tuning_rule": _common.TUNING_RULE,
          "verdict_rule": _common.VERDICT_RULE,
          "quick": args.quick, "machine": _common.machine_info(),
      },
      "tuning": {}, "methods": {},
  }
  with tqdm(total=len(names) * len(grid), desc="adanorm_cnn selection runs",
            disable=args.quiet) as bar:
    for name in names:
      bar.set_postfix_str(name)
      rec = tune(name, model, sel_data, epochs, grid, max_widen,
                 pad_widening=args.quick, bar=bar, compiler_options=fast)
      rec["final_seeds"] = list(_common.FINAL_SEEDS)
      result["tuning"][name] = rec
      result["methods"][name] = final_runs(
          name, model, data, epochs, rec["chosen"], compiler_options=fast)
  result["claims"] = make_claims(result["methods"])
  result["seconds"] = time.perf_counter() - t0
  _common.write_results(out, "adanorm_cnn", result, markdown(result),
                        {"adanorm_cnn_fig3.png": plot})
  for c in result["claims"]:
    acc = c["metric"].startswith("final test acc")
    print(f"{c['claim']} ({'test acc, pp' if acc else 'train loss'}): "
          f"{_common.format_ci(c, 100 if acc else 1e3)} {'pp' if acc else 'x1e-3'} "
          f"-> {c['verdict']}")
  return result


if __name__ == "__main__":
  main()

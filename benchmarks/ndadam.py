"""ND-Adam (Zhang et al. 2018) in small: SGD vs Adam vs ND-Adam on digits.

The paper's claims (Table 1, Fig. 1b; wide ResNets on CIFAR-10/100): Adam
generalizes worse than SGD with momentum and L2 weight decay; ND-Adam, which
keeps each hidden unit's input-weight vector on the unit sphere and adapts one
step size per vector, closes most of that gap, and a regularized softmax
(an L2 penalty on the logits, or BN-softmax: batch-normalized logits with one
fixed scale γ_C) helps further. With BatchNorm the *effective* learning rate
of a layer, ``‖Δw‖/‖w‖``, is what matters; under SGD+L2 it is set indirectly
by the weight norm, under ND-Adam directly by ``α_v``.

This script trains a small residual CNN with BatchNorm on
``sklearn.datasets.load_digits`` (8x8 grey images, the benchmarks' one
split: stratified 80/20, standardized pixels, see ``_common.load_digits``;
no augmentation), for every combination of

  * optimizer: ``sgdm`` (SGD momentum 0.9, L2 weight decay added to the
    gradient), ``adam`` (``optax.adam`` with the same coupled L2 decay),
    ``ndadam`` (``normopt.nd_adam``; conv kernels are the vectors, as in the
    official code; the final Dense layer, biases and BN parameters get Adam
    at the official 1e-3; no weight decay);
  * softmax: ``plain``, ``logit_l2`` (``normopt.losses.logit_l2_penalty``,
    weight 1e-3 as in the official code), ``bn_softmax``
    (``normopt.flax_losses.BNSoftmax``, γ_C fixed at 2.5),

with cosine-decayed step sizes. Every (optimizer, softmax) pair gets its own
step size by the benchmarks' protocol (``_common.TUNING_RULE``): a log grid
of 5 values sqrt(10) apart (SGDM: the base learning rate; Adam: its
learning rate; ND-Adam: the vector step size ``α_v``, its other
hyperparameters at the official values), 2 selection seeds on a validation
split of the training set, the lowest mean final validation cross-entropy
wins and the grid widens while the choice is at an edge; then 5 fresh seeds
train at the chosen step size on the whole training set and are tested.
All (step size, softmax, seed) runs of one optimizer and phase train in ONE
``jit(vmap)`` (the script's own loop: unit-sphere initialization for
ND-Adam, the logit penalty, BN-softmax selected by a traced flag, the
effective learning rate of one conv layer): per optimizer one program for
the selection runs (a call per selection seed), one for the final runs and
one for the widening steps.

The claims (test error, lower is better) are judged by
``_common.VERDICT_RULE`` (paired over seeds: same initialization and batch
order for every optimizer, softmax and step size). Writes the tables
(markdown), the numbers (JSON) and the effective learning rate of one conv
layer over training (PNG, like the paper's Fig. 1b) to
``benchmarks/results/``.

Run from the repository root::

  python benchmarks/ndadam.py                       # full run
  python benchmarks/ndadam.py --quick               # seconds, into a temp folder
  python benchmarks/ndadam.py --epochs 3 --optimizers adam   # partial (temp folder)
"""

from __future__ import annotations

import functools
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import _common
import normopt
from normopt.flax_losses import BNSoftmax

OPTIMIZERS = ("sgdm", "adam", "ndadam")
SOFTMAXES = ("plain", "logit_l2", "bn_softmax")
LABELS = {"sgdm": "SGDM + L2", "adam": "Adam + L2", "ndadam": "ND-Adam"}

# Centres of the step-size grids: the values of the official code
# (SGD 0.1, Adam 1e-3, ND-Adam α_v 0.05).
GRID_CENTERS = {"sgdm": 0.1, "adam": 1e-3, "ndadam": 0.05}

# 8 epochs (the version before the tuning protocol ran 30): the protocol
# trains about six times as many runs (5 step sizes x 2 seeds per method, then
# 5 seeds), so every method's epochs were cut alike to fit the 2-core
# CPU that several jobs share (about 700 CPU-seconds in all).
FULL = dict(epochs=8, batch=128, width=16, blocks=2, n_train=None,
            n_test=None, max_widen=3, optimizers=OPTIMIZERS,
            softmaxes=SOFTMAXES, nd_scalar_tied=True)
QUICK = dict(epochs=1, batch=64, width=4, blocks=1, n_train=256, n_test=128,
             max_widen=0, optimizers=("adam", "ndadam"),
             softmaxes=("plain", "bn_softmax"), nd_scalar_tied=True, quick=True)

# Fixed hyperparameters (official code); the step sizes are tuned.
HPARAMS = dict(
    momentum=0.9, weight_decay=5e-4, nd_lr_scalar=1e-3,
    logit_weight=1e-3, gamma_c=2.5,
)
# The layer whose effective learning rate ‖Δw‖/‖w‖ is tracked.
TRACKED = ("params", "block_0", "conv_2", "kernel")

PAPER = {
    "nd_vs_adam": "Table 1 (WRN on CIFAR-10/100): ND-Adam's test error is "
                  "clearly below Adam's and close to SGD's",
    "sgdm_vs_adam": "Table 1: Adam's test error is worse than SGD's (the "
                    "generalization gap)",
    "half_gap": "ND-Adam closes most of Adam's gap to SGD (Table 1)",
    "logit_l2": "a regularized softmax (L2 penalty on the logits) improves "
                "generalization (Sec. 4)",
    "bn_softmax": "BN-softmax improves generalization further (Sec. 4, "
                  "Table 1)",
}


class Conv3x3(nn.Module):
  """A 3x3 'SAME' convolution (HWIO kernel, no bias) written as one matmul.

  Same parameters and result as ``nn.Conv(width, (3, 3), use_bias=False)``,
  but nine shifted copies and a dot product: on small 8x8 inputs XLA:CPU runs
  this (and its gradient, also vmapped) several times faster than its
  convolution.
  """
  width: int

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    k = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, cin, self.width))
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate(
        [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return patches @ k.reshape(9 * cin, self.width)


class Block(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, train):
    bn = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    h = nn.relu(bn(name="bn_1")(Conv3x3(self.width, name="conv_1")(x)))
    h = bn(name="bn_2")(Conv3x3(self.width, name="conv_2")(h))
    return nn.relu(x + h)


class ResNet(nn.Module):
  """The residual CNN; its logits go through BN-softmax where ``use_bn``.

  ``use_bn`` may be traced (the BN-softmax output or the plain logits are
  selected by ``jnp.where``; BN-softmax has no parameters), so one compiled
  program trains every softmax variant.
  """
  width: int
  blocks: int

  @nn.compact
  def __call__(self, x, train, use_bn=False):
    x = Conv3x3(self.width, name="stem")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn_stem")(x))
    for i in range(self.blocks):
      x = Block(self.width, name=f"block_{i}")(x, train)
    x = x.mean(axis=(1, 2))
    z = nn.Dense(10, name="head")(x)
    bn_z = BNSoftmax(gamma=HPARAMS["gamma_c"], name="bn_softmax")(z, train)
    return jnp.where(use_bn, bn_z, z)


def conv_kernels(path, leaf):
  """ND-Adam's vectors: every conv kernel (HWIO), one vector per output channel."""
  del path
  return (0, 1, 2) if leaf.ndim == 4 else None


def make_optimizer(name, lr, total_steps, nd_scalar_tied=True):
  """The optimizer ``name`` at step size ``lr`` (may be traced), cosine-decayed.

  ND-Adam has two step sizes: ``lr`` is the vector one (α_v); its scalar
  (Adam) step size, for the head, biases and BatchNorm, is ``lr`` times the
  official ratio 1e-3 / 0.05 (``nd_scalar_tied``, the default), so that its
  one tuned knob moves the whole network as Adam's and SGDM's step sizes do;
  without it, the scalar step size stays at the official 1e-3 (a diagnostic:
  tuned against untuned, the head then undertrains).
  """
  cos = lambda v: optax.cosine_decay_schedule(v, total_steps)
  h = HPARAMS
  if name == "sgdm":
    return optax.chain(optax.add_decayed_weights(h["weight_decay"]),
                       optax.sgd(cos(lr), momentum=h["momentum"]))
  if name == "adam":
    return optax.chain(optax.add_decayed_weights(h["weight_decay"]),
                       optax.adam(cos(lr)))
  if name == "ndadam":
    scalar = (lr * h["nd_lr_scalar"] / GRID_CENTERS["ndadam"] if nd_scalar_tied
              else h["nd_lr_scalar"])
    return normopt.nd_adam(cos(lr), cos(scalar), vector_axes=conv_kernels)
  raise ValueError(name)


def _log(msg):
  print(f"[ndadam {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def softmax_config(softmax):
  """``(logit-penalty weight, use BN-softmax)`` of a softmax variant."""
  return {"plain": (0.0, False), "logit_l2": (HPARAMS["logit_weight"], False),
          "bn_softmax": (0.0, True)}[softmax]


@functools.cache
def _trainer(opt_name, epochs, width, blocks, nd_scalar_tied=True, quick=False):
  """The jitted, vmapped training program of ``opt_name``.

  The data are arguments, not constants: the selection and the final runs
  share one compiled program whenever their shapes agree (as in ``--quick``).
  """
  model = ResNet(width, blocks)

  def loss_fn(params, stats, xb, yb, logit_weight, use_bn):
    z, upd = model.apply({"params": params, "batch_stats": stats}, xb, train=True,
                         use_bn=use_bn, mutable=["batch_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()
    return ce + normopt.losses.logit_l2_penalty(z, logit_weight), (ce, upd["batch_stats"])

  def one_run(seed, idx, lr, logit_weight, use_bn, x_tr, y_tr, x_te, y_te):
    tx = make_optimizer(opt_name, lr, idx.shape[0], nd_scalar_tied)
    v = model.init(jax.random.PRNGKey(seed), x_tr[:2], train=False)
    params, stats = v["params"], v["batch_stats"]
    if opt_name == "ndadam":
      params = normopt.normalize_vectors(params, conv_kernels)

    def step(carry, ib):
      params, stats, opt_state = carry
      (_, (ce, stats)), g = jax.value_and_grad(loss_fn, has_aux=True)(
          params, stats, x_tr[ib], y_tr[ib], logit_weight, use_bn)
      u, opt_state = tx.update(g, opt_state, params)
      new = optax.apply_updates(params, u)
      w0, w1 = _get({"params": params}, TRACKED), _get({"params": new}, TRACKED)
      eff = jnp.linalg.norm(w1 - w0) / jnp.linalg.norm(w0)
      return (new, stats, opt_state), (ce, eff)

    (params, stats, _), (ce, eff) = jax.lax.scan(
        step, (params, stats, tx.init(params)), idx)
    variables = {"params": params, "batch_stats": stats}
    z = model.apply(variables, x_te, train=False, use_bn=use_bn)
    z_tr = model.apply(variables, x_tr, train=False, use_bn=use_bn)
    return dict(
        test_loss=optax.softmax_cross_entropy_with_integer_labels(z, y_te).mean(),
        test_err=jnp.mean(jnp.argmax(z, -1) != y_te),
        train_err=jnp.mean(jnp.argmax(z_tr, -1) != y_tr),
        train_ce=ce.reshape(epochs, -1).mean(-1), eff_lr=eff,
        logit_rms=jnp.sqrt(jnp.mean(jnp.square(z))))

  return jax.jit(jax.vmap(one_run, in_axes=(0,) * 5 + (None,) * 4),
                 compiler_options=_common.QUICK_CHEAP_COMPILE_OPTIONS if quick else None)


def make_run(opt_name, data, cfg):
  """``run(configs, seeds) -> dict of arrays (len(configs), len(seeds), ...)``.

  ``configs`` is a list of ``(step size, softmax variant)``; every (config,
  seed) pair trains in ONE ``jit(vmap)`` (compiled once per optimizer and
  shape: number of pairs, data). The seed sets the initialization
  (``PRNGKey(seed)``) and the batch order (a NumPy permutation per epoch),
  the same for every optimizer, softmax and step size. After training:
  cross-entropy and error on ``data.x_test`` (the validation split during
  selection), train error, the per-epoch train cross-entropy, the effective
  learning rate of :data:`TRACKED` per step, and the RMS of the test logits.
  """
  arrays = [jnp.asarray(a) for a in data[:4]]
  n = arrays[0].shape[0]
  steps_per_epoch = n // cfg["batch"]
  total = steps_per_epoch * cfg["epochs"]
  train = _trainer(opt_name, cfg["epochs"], cfg["width"], cfg["blocks"],
                   cfg.get("nd_scalar_tied", True), cfg.get("quick", False))

  def run(configs, seeds):
    pairs = [(lr, sm, s) for lr, sm in configs for s in seeds]
    orders = []
    for _, _, seed in pairs:
      rng = np.random.default_rng(seed)
      order = np.concatenate([rng.permutation(n)[: steps_per_epoch * cfg["batch"]]
                              for _ in range(cfg["epochs"])])
      orders.append(order.reshape(total, cfg["batch"]))
    soft = [softmax_config(sm) for _, sm, _ in pairs]
    out = train(jnp.asarray([s for _, _, s in pairs], jnp.uint32),
                jnp.asarray(np.stack(orders), jnp.int32),
                jnp.asarray([lr for lr, _, _ in pairs], jnp.float32),
                jnp.asarray([w for w, _ in soft], jnp.float32),
                jnp.asarray([b for _, b in soft], jnp.bool_), *arrays)
    shape = (len(configs), len(seeds))
    return {k: np.asarray(v, np.float64).reshape(shape + v.shape[1:])
            for k, v in out.items()}

  return run, total


def tune_optimizer(opt_name, softmaxes, sel, cfg):
  """Tunes the step size of ``opt_name`` for each softmax variant.

  The whole grid of every softmax, times the selection seeds, trains in ONE
  call (one compile); each widening step is one more call (1 step size x 2
  seeds; one more compile, shared by every widening of this optimizer).
  Returns ``{softmax: tune_lr record}``.
  """
  run, _ = make_run(opt_name, sel, cfg)
  grid = _common.log_grid(GRID_CENTERS[opt_name])
  seeds = list(_common.SELECT_SEEDS)
  t0 = time.perf_counter()
  # One call per selection seed: len(grid) * len(softmaxes) pairs each, as
  # many as the final call has (5 seeds of 5-value grids), so with equal data
  # shapes the two phases share one compiled program.
  configs = [(lr, sm) for sm in softmaxes for lr in grid]
  first = np.concatenate([run(configs, [s])["test_loss"] for s in seeds], axis=1)
  first = first.reshape(len(softmaxes), len(grid), len(seeds))
  records = {}
  for i, sm in enumerate(softmaxes):
    cache = {lr: first[i, j] for j, lr in enumerate(grid)}

    def evaluate(lrs, eval_seeds, sm=sm, cache=cache):
      if list(eval_seeds) != seeds:
        raise ValueError(f"selection seeds {eval_seeds}, expected {seeds}")
      missing = [lr for lr in lrs if lr not in cache]
      if missing:
        out = run([(lr, sm) for lr in missing], seeds)["test_loss"]
        cache.update(zip(missing, out, strict=True))
      return np.stack([cache[lr] for lr in lrs])

    records[sm] = _common.tune_lr(evaluate, grid, seeds=seeds,
                                  max_widen=cfg["max_widen"])
    _log(f"{opt_name}/{sm}: chose {records[sm]['chosen']:g} of "
         f"{records[sm]['grid']} (widened {records[sm]['widened']})")
  seconds = time.perf_counter() - t0
  for r in records.values():
    r["optimizer_seconds"] = seconds
  return records


def final_optimizer(opt_name, chosen, full, cfg):
  """The final seeds of every softmax variant at its chosen step size, in
  one call on the whole training set, tested on the test set."""
  run, total = make_run(opt_name, full, cfg)
  softmaxes = list(chosen)
  seeds = list(_common.FINAL_SEEDS)
  t0 = time.perf_counter()
  out = run([(chosen[s], s) for s in softmaxes], seeds)
  seconds = time.perf_counter() - t0
  _log(f"{opt_name}: final runs done ({seconds:.0f} s)")
  results = {}
  for i, sm in enumerate(softmaxes):
    o = {k: v[i] for k, v in out.items()}
    weight, use_bn = softmax_config(sm)
    results[f"{opt_name}/{sm}"] = dict(
        optimizer=opt_name, softmax=sm, lr=chosen[sm], logit_weight=weight,
        bn_softmax=use_bn, seeds=seeds,
        test_err=o["test_err"].tolist(), test_loss=o["test_loss"].tolist(),
        train_err=o["train_err"].tolist(), train_ce=o["train_ce"].tolist(),
        eff_lr=o["eff_lr"].mean(0).tolist(),
        logit_rms=o["logit_rms"].tolist(), optimizer_seconds=seconds)
  return results, total


def make_claims(results):
  """Every claim the results allow, by ``_common.claim`` (test error)."""
  err = {k: np.asarray(r["test_err"]) for k, r in results.items()}
  claims = []
  c = functools.partial(_common.claim, metric="test error (fraction)")
  for sm in SOFTMAXES:
    nd, ad, sg = (err.get(f"{o}/{sm}") for o in ("ndadam", "adam", "sgdm"))
    if nd is not None and ad is not None:
      claims.append(c("ND-Adam beats Adam", nd, ad, paper=PAPER["nd_vs_adam"],
                      group=sm, method_a="ndadam/" + sm, method_b="adam/" + sm))
    if sg is not None and ad is not None:
      claims.append(c("SGDM beats Adam", sg, ad, paper=PAPER["sgdm_vs_adam"],
                      group=sm, method_a="sgdm/" + sm, method_b="adam/" + sm))
    if nd is not None and ad is not None and sg is not None:
      # ND-Adam below the midpoint of Adam and SGDM, seed by seed: it closes
      # more than half of the Adam-SGDM gap (meaningful where the gap holds).
      claims.append(c("ND-Adam closes >= half of the Adam-SGDM gap", nd,
                      (ad + sg) / 2, paper=PAPER["half_gap"], group=sm,
                      method_a="ndadam/" + sm,
                      method_b="(adam + sgdm)/2 of " + sm))
  for o in OPTIMIZERS:
    plain = err.get(f"{o}/plain")
    for sm in ("logit_l2", "bn_softmax"):
      if plain is not None and f"{o}/{sm}" in err:
        claims.append(c(f"{sm} beats plain", err[f"{o}/{sm}"], plain,
                        paper=PAPER[sm], group=o, method_a=f"{o}/{sm}",
                        method_b=f"{o}/plain"))
  return claims


def run(cfg, quick=False, quiet=False):
  from tqdm import tqdm
  # quick: as many validation as test images
  full, sel = _common.tuning_data(images=True, n_train=cfg["n_train"], n_eval=cfg["n_test"])
  tuning, results, total = {}, {}, None
  t0 = time.time()
  for opt_name in tqdm(cfg["optimizers"], desc="ndadam", disable=quiet):
    recs = tune_optimizer(opt_name, list(cfg["softmaxes"]), sel, cfg)
    for sm, rec in recs.items():
      tuning[f"{opt_name}/{sm}"] = dict(rec, final_seeds=list(_common.FINAL_SEEDS))
    res, total = final_optimizer(
        opt_name, {s: r["chosen"] for s, r in recs.items()}, full, cfg)
    results.update(res)
  config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
  config.update(
      hparams=HPARAMS, grid_centers=GRID_CENTERS, steps=total,
      tracked_layer="/".join(TRACKED),
      n_train=int(full.x_train.shape[0]), n_test=int(full.x_test.shape[0]),
      n_select_train=int(sel.x_train.shape[0]), n_val=int(sel.x_test.shape[0]),
      tuning_rule=_common.TUNING_RULE, verdict_rule=_common.VERDICT_RULE,
      data=_common.DIGITS_CONVENTION, machine=_common.machine_info())
  return dict(config=config, tuning=tuning, results=results,
              claims=make_claims(results), elapsed_s=time.time() - t0)


def _pct(values):
  m, sd = _common.mean_std(100 * np.asarray(values))
  return f"{m:.2f} ± {sd:.2f}"


def table(payload):
  res, tun, c = payload["results"], payload["tuning"], payload["config"]
  lines = ["| method | step-size grid | chosen | interior | test error % | "
           "test cross-entropy | train error % | test-logit RMS |",
           "|---|---|---|---|---|---|---|---|"]
  for o in OPTIMIZERS:
    for s in SOFTMAXES:
      key = f"{o}/{s}"
      if key not in res:
        continue
      t = tun[key]
      tl = _common.mean_std(res[key]["test_loss"])
      lines.append(
          f"| {LABELS[o]}, {s} | {t['grid'][0]:g} … {t['grid'][-1]:g} "
          f"({len(t['grid'])}) | {t['chosen']:g} | "
          f"{'yes' if t['interior'] else 'no'} | {_pct(res[key]['test_err'])} | "
          f"{tl[0]:.4f} ± {tl[1]:.4f} | {_pct(res[key]['train_err'])} | "
          f"{np.mean(res[key]['logit_rms']):.2f} |")
  sms = [s for s in SOFTMAXES if any(r["softmax"] == s for r in res.values())]
  lines += ["", "In the form of the paper's Table 1 (test error %, mean ± std "
            f"over {len(_common.FINAL_SEEDS)} seeds):", "",
            "| optimizer | " + " | ".join(sms) + " |", "|" + "---|" * (len(sms) + 1)]
  for o in OPTIMIZERS:
    cells = [_pct(res[f"{o}/{s}"]["test_err"]) if f"{o}/{s}" in res else "–"
             for s in sms]
    if any(x != "–" for x in cells):
      lines.append(f"| {LABELS[o]} | " + " | ".join(cells) + " |")
  lines += ["", "Claims (test error; difference A − B in percentage points, "
            "95% CI over the paired seeds; one test digit = "
            f"{100 / c['n_test']:.2f} pp):", "",
            "| claim | group | A − B (pp) [95% CI] | verdict | paper |",
            "|---|---|---|---|---|"]
  for cl in payload["claims"]:
    lines.append(f"| {cl['claim']} | {cl['group']} | {_common.format_ci(cl, 100)} | "
                 f"{cl['verdict']} | {cl['paper']} |")
  errs = {k: 100 * np.asarray(r["test_err"]) for k, r in res.items()}
  gap_lines = []
  for s in sms:
    if all(f"{o}/{s}" in errs for o in OPTIMIZERS):
      sg, ad, nd = (errs[f"{o}/{s}"].mean() for o in OPTIMIZERS)
      gap_lines.append(f"- {s}: Adam − SGDM = {ad - sg:+.2f} pp, ND-Adam − SGDM = "
                       f"{nd - sg:+.2f} pp.")
  if gap_lines:
    lines += ["", "Gaps (means over the final seeds):", ""] + gap_lines
  lines += [
      "", f"Residual CNN width {c['width']}, {c['blocks']} blocks, "
      f"{c['epochs']} epochs of batch {c['batch']} ({c['steps']} steps, cosine "
      f"decay) for every method; {c['n_train']} train / {c['n_test']} test "
      f"digits (selection: {c['n_select_train']} train / {c['n_val']} "
      f"validation); {payload['elapsed_s']:.0f} s in all.", "",
      f"Tuning: {_common.TUNING_RULE} Here the ND-Adam step size is the "
      f"vector step size α_v, and its scalar Adam step size (head, biases, "
      + ("BatchNorm) scales with it at the official ratio "
         f"{HPARAMS['nd_lr_scalar']:g} / {GRID_CENTERS['ndadam']:g}, so that "
         "one tuned knob moves the whole network, as Adam's and SGDM's do"
         if c.get("nd_scalar_tied", True) else
         f"BatchNorm) stays at the official {HPARAMS['nd_lr_scalar']:g} "
         "(the `--nd-scalar-fixed` diagnostic)")
      + "; L2 weight decay "
      f"{HPARAMS['weight_decay']:g} and the logit penalty weight "
      f"{HPARAMS['logit_weight']:g} are fixed.", "",
      f"Verdicts: {_common.VERDICT_RULE}"]
  return "\n".join(lines) + "\n"


def plot(payload):
  import matplotlib.pyplot as plt
  res = payload["results"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for o in OPTIMIZERS:
    for s, ls in (("plain", "-"), ("logit_l2", ":"), ("bn_softmax", "--")):
      r = res.get(f"{o}/{s}")
      if r is None:
        continue
      eff = np.asarray(r["eff_lr"])
      k = max(1, len(eff) // 60)
      sm = eff[: len(eff) // k * k].reshape(-1, k).mean(1)
      x = (np.arange(len(sm)) + 0.5) * k
      color = {"sgdm": "C0", "adam": "C1", "ndadam": "C2"}[o]
      axes[0].plot(x, sm, ls, color=color,
                   label=f"{LABELS[o]} ({s}, lr {r['lr']:g})")
      ce = np.asarray(r["train_ce"]).mean(0)
      axes[1].plot(np.arange(1, len(ce) + 1), ce, ls, color=color)
  axes[0].set_yscale("log")
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("‖Δw‖ / ‖w‖ (mean over seeds)")
  axes[0].set_title(f"effective learning rate of {'/'.join(TRACKED[1:3])}")
  axes[0].legend(fontsize=6)
  axes[1].set_yscale("log")
  axes[1].set_xlabel("epoch")
  axes[1].set_ylabel("train cross-entropy (mean over seeds)")
  axes[1].set_title("training loss at the chosen step sizes")
  return fig


def main(argv=None):
  parser = _common.make_parser(__doc__, "a few seconds, tiny model, 2 optimizers")
  parser.add_argument("--epochs", type=int, default=None,
                      help="epochs per run (a partial run unless it is the full one's)")
  parser.add_argument("--optimizers", default=None,
                      help="comma-separated subset of " + ",".join(OPTIMIZERS)
                      + " (a partial run)")
  parser.add_argument("--nd-scalar-fixed", action="store_true",
                      help="diagnostic (a partial run): ND-Adam's scalar step "
                      "size stays at the official 1e-3 instead of scaling "
                      "with α_v")
  args = parser.parse_args(argv)
  cfg = dict(QUICK if args.quick else FULL)
  if args.nd_scalar_fixed:
    cfg["nd_scalar_tied"] = False
  if args.epochs is not None:
    cfg["epochs"] = args.epochs
  if args.optimizers:
    cfg["optimizers"] = tuple(args.optimizers.split(","))
  partial = (not args.quick) and (cfg["epochs"] != FULL["epochs"]
                                  or tuple(cfg["optimizers"]) != FULL["optimizers"]
                                  or args.nd_scalar_fixed)
  out = _common.output_dir(parser, args, "ndadam", partial=partial)
  payload = run(cfg, args.quick, args.quiet)
  payload["quick"] = args.quick
  payload["partial"] = partial
  md = table(payload)
  _common.write_results(out, "ndadam", payload,
                        "# ND-Adam on digits: test error, each method at its own "
                        "step size\n\n" + md,
                        {"ndadam_efflr.png": plot})
  print(md)
  return payload


if __name__ == "__main__":
  main()

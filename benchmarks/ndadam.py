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
    official code; the final Dense layer, biases and BN parameters get Adam;
    no weight decay);
  * softmax: ``plain``, ``logit_l2`` (``normopt.losses.logit_l2_penalty``,
    weight 1e-3 as in the official code), ``bn_softmax``
    (``normopt.flax_losses.BNSoftmax``, γ_C fixed),

with cosine-decayed learning rates, 3 seeds (initialization and
batch order; one compiled function per optimizer and model, run once per
seed), and writes the test-error table (markdown, in the form of the
paper's Table 1), the numbers (JSON) and the effective learning rate of one
conv layer over training (PNG, like the paper's Fig. 1b) to
``benchmarks/results/``.

Run from the repository root::

  python benchmarks/ndadam.py                       # full run
  python benchmarks/ndadam.py --quick               # seconds, into a temp folder
"""

from __future__ import annotations

import functools
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

FULL = dict(epochs=30, seeds=3, batch=128, width=16, blocks=2,
            configs=[(o, s) for o in OPTIMIZERS for s in SOFTMAXES])
QUICK = dict(epochs=2, seeds=2, batch=64, width=4, blocks=1,
             configs=[("ndadam", "bn_softmax")])

HPARAMS = dict(
    sgd_lr=0.1, momentum=0.9, weight_decay=5e-4,
    adam_lr=1e-3,
    nd_lr_vector=0.05, nd_lr_scalar=1e-3,
    logit_weight=1e-3, gamma_c=2.5,
)
# The layer whose effective learning rate ‖Δw‖/‖w‖ is tracked.
TRACKED = ("params", "block_0", "conv_2", "kernel")


def load_data(quick):
  d = _common.load_digits(images=True, n_train=256 if quick else None,
                          n_test=128 if quick else None)
  return tuple(jnp.asarray(a) for a in d[:4])


class Conv3x3(nn.Module):
  """A 3x3 'SAME' convolution (HWIO kernel, no bias) written as one matmul.

  Same parameters and result as ``nn.Conv(width, (3, 3), use_bias=False)``,
  but nine shifted copies and a dot product: on small 8x8 inputs XLA:CPU runs
  this (and its gradient) several times faster than its convolution.
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
  width: int
  blocks: int
  bn_softmax: bool

  @nn.compact
  def __call__(self, x, train):
    x = Conv3x3(self.width, name="stem")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn_stem")(x))
    for i in range(self.blocks):
      x = Block(self.width, name=f"block_{i}")(x, train)
    x = x.mean(axis=(1, 2))
    z = nn.Dense(10, name="head")(x)
    if self.bn_softmax:
      z = BNSoftmax(gamma=HPARAMS["gamma_c"], name="bn_softmax")(z, train)
    return z


def conv_kernels(path, leaf):
  """ND-Adam's vectors: every conv kernel (HWIO), one vector per output channel."""
  del path
  return (0, 1, 2) if leaf.ndim == 4 else None


def make_optimizer(name, total_steps):
  cos = lambda lr: optax.cosine_decay_schedule(lr, total_steps)
  h = HPARAMS
  if name == "sgdm":
    return optax.chain(optax.add_decayed_weights(h["weight_decay"]),
                       optax.sgd(cos(h["sgd_lr"]), momentum=h["momentum"]))
  if name == "adam":
    return optax.chain(optax.add_decayed_weights(h["weight_decay"]),
                       optax.adam(cos(h["adam_lr"])))
  if name == "ndadam":
    return normopt.nd_adam(cos(h["nd_lr_vector"]), cos(h["nd_lr_scalar"]),
                           vector_axes=conv_kernels)
  raise ValueError(name)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def make_run(opt_name, bn_softmax, data, cfg):
  """A function ``(seeds, logit_weight) -> results stacked over seeds``."""
  x_tr, y_tr, x_te, y_te = data
  n = x_tr.shape[0]
  steps_per_epoch = n // cfg["batch"]
  total = steps_per_epoch * cfg["epochs"]
  model = ResNet(cfg["width"], cfg["blocks"], bn_softmax)
  tx = make_optimizer(opt_name, total)

  def loss_fn(params, stats, xb, yb, logit_weight):
    z, upd = model.apply({"params": params, "batch_stats": stats}, xb, train=True,
                         mutable=["batch_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()
    return ce + normopt.losses.logit_l2_penalty(z, logit_weight), (ce, upd["batch_stats"])

  def one_seed(seed, logit_weight):
    k_init, k_data = jax.random.split(jax.random.key(seed))
    v = model.init(k_init, x_tr[:2], train=False)
    params, stats = v["params"], v["batch_stats"]
    if opt_name == "ndadam":
      params = normopt.normalize_vectors(params, conv_kernels)
    opt_state = tx.init(params)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(
        jax.random.split(k_data, cfg["epochs"]))
    idx = perms[:, : steps_per_epoch * cfg["batch"]].reshape(total, cfg["batch"])

    def step(carry, ib):
      params, stats, opt_state = carry
      (_, (ce, stats)), g = jax.value_and_grad(loss_fn, has_aux=True)(
          params, stats, x_tr[ib], y_tr[ib], logit_weight)
      u, opt_state = tx.update(g, opt_state, params)
      new = optax.apply_updates(params, u)
      w0, w1 = _get({"params": params}, TRACKED), _get({"params": new}, TRACKED)
      eff = jnp.linalg.norm(w1 - w0) / jnp.linalg.norm(w0)
      return (new, stats, opt_state), (ce, eff)

    (params, stats, _), (ce, eff) = jax.lax.scan(step, (params, stats, opt_state), idx)
    z = model.apply({"params": params, "batch_stats": stats}, x_te, train=False)
    test_err = jnp.mean(jnp.argmax(z, -1) != y_te)
    z_tr = model.apply({"params": params, "batch_stats": stats}, x_tr, train=False)
    train_err = jnp.mean(jnp.argmax(z_tr, -1) != y_tr)
    return dict(test_err=test_err, train_err=train_err,
                train_ce=ce.reshape(cfg["epochs"], -1).mean(-1), eff_lr=eff,
                logit_rms=jnp.sqrt(jnp.mean(jnp.square(z))))

  # Seeds run one after another through ONE compiled function: vmapping over
  # seeds would turn every convolution into a grouped one, which XLA:CPU runs
  # many times slower.
  jitted = jax.jit(one_seed)

  def all_seeds(seeds, logit_weight):
    outs = [jitted(s, logit_weight) for s in seeds]
    return jax.tree.map(lambda *x: jnp.stack(x), *outs)

  return all_seeds, total


def run(cfg, quick, quiet=False):
  from tqdm import tqdm
  data = load_data(quick)
  seeds = jnp.arange(cfg["seeds"])
  results, cache = {}, {}
  t0 = time.time()
  for opt_name, sm in tqdm(cfg["configs"], desc="ndadam", disable=quiet):
    key = (opt_name, sm == "bn_softmax")
    if key not in cache:
      cache[key] = make_run(opt_name, sm == "bn_softmax", data, cfg)
    fn, total = cache[key]
    weight = HPARAMS["logit_weight"] if sm == "logit_l2" else 0.0
    t = time.time()
    out = jax.tree.map(np.asarray, fn(seeds, jnp.float32(weight)))
    results[f"{opt_name}/{sm}"] = dict(
        optimizer=opt_name, softmax=sm,
        test_err=out["test_err"].tolist(), train_err=out["train_err"].tolist(),
        train_ce=out["train_ce"].tolist(),
        eff_lr=out["eff_lr"].mean(0).tolist(),
        logit_rms=out["logit_rms"].tolist(), seconds=time.time() - t)
  return dict(
      config={k: v for k, v in cfg.items() if k != "configs"},
      hparams=HPARAMS, steps=total, tracked_layer="/".join(TRACKED),
      n_train=int(data[0].shape[0]), n_test=int(data[2].shape[0]),
      data=_common.DIGITS_CONVENTION, machine=_common.machine_info(),
      elapsed_s=time.time() - t0, results=results)


def table(payload):
  res = payload["results"]
  sms = [s for s in SOFTMAXES if any(r["softmax"] == s for r in res.values())]
  head = "| optimizer | " + " | ".join(f"test error % ({s})" for s in sms) + " |"
  lines = [head, "|" + "---|" * (len(sms) + 1)]
  for o in OPTIMIZERS:
    cells = []
    for s in sms:
      r = res.get(f"{o}/{s}")
      if r is None:
        cells.append("–")
        continue
      m, sd = _common.mean_std(100 * np.asarray(r["test_err"]))
      cells.append(f"{m:.2f} ± {sd:.2f}")
    if any(c != "–" for c in cells):
      lines.append(f"| {LABELS[o]} | " + " | ".join(cells) + " |")
  lines += ["", "Paper (Table 1, WRN on CIFAR-10/100): Adam's test error is worse than "
            "SGD's; ND-Adam closes most of the gap, and a regularized softmax "
            "lowers the errors further. Here:", ""]
  errs = {k: 100 * np.mean(r["test_err"]) for k, r in res.items()}
  for s in sms:
    if all(f"{o}/{s}" in errs for o in OPTIMIZERS):
      sg, ad, nd = (errs[f"{o}/{s}"] for o in OPTIMIZERS)
      lines.append(
          f"- {s}: Adam - SGDM = {ad - sg:+.2f} pp, ND-Adam - SGDM = "
          f"{nd - sg:+.2f} pp (one test digit = {100 / payload['n_test']:.2f} pp).")
  c = payload["config"]
  lines.append("")
  lines.append(
      f"Mean ± std over {c['seeds']} seeds; {payload['n_train']} train / "
      f"{payload['n_test']} test digits; residual CNN width {c['width']}, "
      f"{c['blocks']} blocks, {c['epochs']} epochs of batch {c['batch']} "
      f"({payload['steps']} steps); {payload['elapsed_s']:.0f} s.")
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
      axes[0].plot(x, sm, ls, color=color, label=f"{LABELS[o]} ({s})")
      ce = np.asarray(r["train_ce"]).mean(0)
      axes[1].plot(np.arange(1, len(ce) + 1), ce, ls, color=color)
  axes[0].set_yscale("log")
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("‖Δw‖ / ‖w‖")
  axes[0].set_title(f"effective learning rate of {'/'.join(TRACKED[1:3])}")
  axes[0].legend(fontsize=6)
  axes[1].set_yscale("log")
  axes[1].set_xlabel("epoch")
  axes[1].set_ylabel("train cross-entropy (mean over seeds)")
  axes[1].set_title("training loss")
  return fig


def main(argv=None):
  parser = _common.make_parser(__doc__, "a few seconds, tiny model")
  args = parser.parse_args(argv)
  out = _common.output_dir(parser, args, "ndadam")
  payload = run(QUICK if args.quick else FULL, args.quick, args.quiet)
  payload["quick"] = args.quick
  md = table(payload)
  _common.write_results(out, "ndadam", payload,
                        "# ND-Adam on digits: test error\n\n" + md,
                        {"ndadam_efflr.png": plot})
  print(md)
  return payload


if __name__ == "__main__":
  main()

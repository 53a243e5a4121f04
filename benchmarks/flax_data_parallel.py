"""Data-parallel training of a Flax Linen CNN on digits with normopt.adam_ng.

The same model, data order and optimizer run two ways on 8 virtual CPU
devices:

* ``pmap``: parameters replicated per device, each device takes 1/8 of the
  batch, gradients are ``pmean``-ed, then ``adam_ng`` updates every replica;
* ``sharded jit``: one ``jax.jit`` program, the batch placed with
  ``NamedSharding(mesh, P("data"))`` and parameters replicated; the mean over
  the global batch (and so the block norms) is computed by XLA across shards.

Both must print the same loss per epoch. Data: the benchmarks' one digits
split (stratified 80/20, standardized; ``_common.load_digits``); ``--seed``
sets the initialization and the batch order. Run from the repository root::

  python benchmarks/flax_data_parallel.py          # full: results/ JSON, PNG, MD
  python benchmarks/flax_data_parallel.py --quick  # seconds, into a temp folder
"""

from __future__ import annotations

import os

# 8 virtual CPU devices; must be set before JAX starts.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import time

from flax import linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
from tqdm import tqdm

import _common
import normopt

N_DEV = 8


class CNN(nn.Module):
  """A small CNN for 8x8 digit images."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


def loss_fn(params, x, y):
  logits = CNN().apply(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_pmap_step(tx):
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    grads = jax.lax.pmean(grads, "batch")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, jax.lax.pmean(loss, "batch")

  return jax.pmap(step, axis_name="batch")


def make_jit_step(tx, mesh):
  data = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())

  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return step, data, repl


def epoch_batches(rng, n, batch_size):
  perm = rng.permutation(n)
  return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def accuracy(params, x, y):
  return float((jnp.argmax(CNN().apply(params, x), -1) == y).mean())


def train(args):
  x_tr, y_tr, x_te, y_te = _common.load_digits(
      images=True, n_train=256 if args.quick else None)[:4]
  epochs = 2 if args.quick else args.epochs
  bs = args.batch_size
  assert bs % N_DEV == 0
  assert jax.device_count() == N_DEV, jax.devices()
  params0 = CNN().init(jax.random.key(args.seed), x_tr[:1])
  tx = normopt.adam_ng(args.learning_rate)

  # --- pmap: replicate params/state, split each batch over the devices.
  pstep = make_pmap_step(tx)
  rep = lambda t: jax.tree.map(lambda x: np.broadcast_to(x, (N_DEV,) + np.shape(x)), t)
  pp, ps = rep(params0), rep(tx.init(params0))
  # --- sharded jit: batch split over the "data" mesh axis, params replicated.
  mesh = Mesh(np.array(jax.devices()), ("data",))
  jstep, data_sh, repl_sh = make_jit_step(tx, mesh)
  jp = jax.device_put(params0, repl_sh)
  js = jax.device_put(tx.init(params0), repl_sh)

  rng = np.random.default_rng(args.seed)
  history = []
  for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=args.quiet):
    batches = epoch_batches(rng, len(x_tr), bs)
    lp, lj, tp, tj = [], [], 0.0, 0.0
    # Interleave the two paths batch by batch on the same data.
    for idx in batches:
      xb, yb = x_tr[idx], y_tr[idx]
      t0 = time.perf_counter()
      pp, ps, loss_p = pstep(
          pp, ps, xb.reshape(N_DEV, -1, *xb.shape[1:]), yb.reshape(N_DEV, -1)
      )
      loss_p = float(loss_p[0])
      t1 = time.perf_counter()
      jp, js, loss_j = jstep(
          jp, js, jax.device_put(xb, data_sh), jax.device_put(yb, data_sh)
      )
      loss_j = float(loss_j)
      t2 = time.perf_counter()
      tp += t1 - t0
      tj += t2 - t1
      lp.append(loss_p)
      lj.append(loss_j)
    p_host = jax.tree.map(lambda x: x[0], pp)
    dev = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(p_host), jax.tree.leaves(jp), strict=True)
    )
    row = dict(
        epoch=epoch,
        loss_pmap=float(np.mean(lp)),
        loss_jit=float(np.mean(lj)),
        max_loss_diff=float(np.max(np.abs(np.array(lp) - np.array(lj)))),
        max_param_diff=dev,
        test_acc_pmap=accuracy(p_host, x_te, y_te),
        test_acc_jit=accuracy(jp, x_te, y_te),
        seconds_pmap=tp,
        seconds_jit=tj,
    )
    history.append(row)
    tqdm.write(
        f"epoch {epoch:2d}  loss pmap {row['loss_pmap']:.6f}  loss jit {row['loss_jit']:.6f}"
        f"  |diff| {row['max_loss_diff']:.1e}  params |diff| {dev:.1e}"
        f"  test acc {row['test_acc_pmap']:.3f} / {row['test_acc_jit']:.3f}"
    )
  return dict(
      config=dict(
          epochs=epochs, batch_size=bs, learning_rate=args.learning_rate, seed=args.seed,
          n_train=len(x_tr), n_test=len(x_te), devices=N_DEV, quick=args.quick,
          optimizer="normopt.adam_ng(blocks='layer')", jax=jax.__version__,
          data=_common.DIGITS_CONVENTION,
          machine=_common.machine_info(f", {N_DEV} virtual XLA devices"),
      ),
      history=history,
  )


def plot(result):
  import matplotlib.pyplot as plt

  h = result["history"]
  ep = [r["epoch"] for r in h]
  fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
  ax[0].plot(ep, [r["loss_pmap"] for r in h], "o-", label="pmap")
  ax[0].plot(ep, [r["loss_jit"] for r in h], "x--", label="sharded jit")
  ax[0].set(xlabel="epoch", ylabel="mean train loss", yscale="log", title="adam_ng, 8 devices")
  ax[0].legend()
  ax[1].semilogy(ep, [max(r["max_loss_diff"], 1e-12) for r in h], "o-", label="max |loss diff|")
  ax[1].semilogy(ep, [max(r["max_param_diff"], 1e-12) for r in h], "x-", label="max |param diff|")
  ax[1].set(xlabel="epoch", title="pmap vs sharded jit (0 drawn at 1e-12)")
  ax[1].legend()
  return fig


def markdown(result):
  h = result["history"]
  c = result["config"]
  lines = [
      f"# Flax Linen CNN on digits, data parallel over {c['devices']} devices",
      "",
      f"`{c['optimizer']}`, lr {c['learning_rate']}, global batch {c['batch_size']}, "
      f"{c['n_train']} train / {c['n_test']} test images, seed {c['seed']}.",
      "",
      "| epoch | loss pmap | loss sharded jit | max abs loss diff | max abs param diff "
      "| test acc pmap | test acc jit | s pmap | s jit |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in h:
    lines.append(
        f"| {r['epoch']} | {r['loss_pmap']:.6f} | {r['loss_jit']:.6f} | {r['max_loss_diff']:.1e} "
        f"| {r['max_param_diff']:.1e} | {r['test_acc_pmap']:.3f} | {r['test_acc_jit']:.3f} "
        f"| {r['seconds_pmap']:.2f} | {r['seconds_jit']:.2f} |"
    )
  lines += [
      "",
      "Seconds include compilation in epoch 1; 8 virtual devices share 2 CPU cores, so",
      "they compare nothing about real accelerators.",
  ]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = _common.make_parser(__doc__, "2 epochs on 256 images")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--learning-rate", type=float, default=3e-3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  partial = any(getattr(args, k) != parser.get_default(k)
                for k in ("epochs", "batch_size", "learning_rate", "seed"))
  out = _common.output_dir(parser, args, "flax_data_parallel", partial=partial)
  result = train(args)
  _common.write_results(out, "flax_data_parallel", result, markdown(result),
                        {"flax_data_parallel.png": plot})
  return result


if __name__ == "__main__":
  main()

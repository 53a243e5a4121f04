"""What every benchmark shares: data, training loops, statistics, output and CLI.

The scripts in ``benchmarks/`` hold only their experiment (models, optimizers,
claims, tables, plots); this module holds, once:

* :func:`load_digits`: scikit-learn's digits with ONE split convention
  (:data:`DIGITS_CONVENTION`);
* :func:`make_vmapped_run`: a whole training run of a plain-JAX model in one
  ``jit``, seeds ``vmap``-ed, curves evaluated every ``eval_every`` steps;
* :func:`make_flax_vmapped_run`: the same for a Flax Linen model with
  BatchNorm (softmax cross-entropy, minibatch steps in a ``lax.scan``): every
  epoch of every (step size, seed) in one ``jit(vmap)``;
* the tuning protocol (:func:`log_grid`, :func:`selection_split`,
  :func:`tune_lr`, :data:`SELECT_SEEDS`, :data:`FINAL_SEEDS`): every
  optimizer at its own step size, chosen on a validation split;
* :func:`mean_std`: "mean ± std over seeds" (sample std, ``ddof=1``);
  :func:`paired_ci` and :func:`claim`: the ONE verdict rule
  (:data:`VERDICT_RULE`) of every paper claim;
* :func:`machine_info`, :func:`write_results`: where and how a run ran, and
  its JSON + markdown (+ figures);
* :func:`save_figure`: every figure saved with its titles and labels inside
  it (:func:`fit_figure`, checked by :func:`text_outside`);
* :func:`make_parser`, :func:`output_dir`: the CLI, with ONE ``--quick``
  policy: a quick (or otherwise partial) run never writes into
  ``benchmarks/results/``; it writes to ``--out`` or, without it, to a fresh
  temporary folder. Only a full run with the committed configuration writes
  there (its default).

Scripts import it as ``_common`` (``python benchmarks/x.py`` puts
``benchmarks/`` on ``sys.path``; the tests' ``load_bench`` fixture does too).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import contextlib
import json
import math
import os
import pathlib
import platform
import tempfile
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"

# ---------------------------------------------------------------------------
# Data

DIGITS_TEST_FRACTION = 0.2
DIGITS_SEED = 0
DIGITS_CONVENTION = (
    "sklearn load_digits (1,797 8x8 images), stratified 80/20 train/test split "
    "(random_state=0: 1,437 / 360 images); pixels /16, then standardized with one "
    "mean and std of the training pixels")


class Digits(NamedTuple):
  """Standardized digits: float32 inputs, int32 labels (NumPy arrays).

  ``x_*`` are ``(n, 8, 8, 1)`` images (NHWC) or ``(n, 64)`` vectors; the
  validation arrays are ``None`` unless a validation split was asked for.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  x_val: np.ndarray | None = None
  y_val: np.ndarray | None = None


def load_digits(images: bool = False, val_fraction: float = 0.0,
                n_train: int | None = None, n_test: int | None = None) -> Digits:
  """scikit-learn's digits in the one split convention of the benchmarks.

  The convention (:data:`DIGITS_CONVENTION`): a stratified 80/20 train/test
  split with ``random_state=0`` (1,437 train / 360 test images; the test set
  never changes), pixel values divided by 16, then standardized by ONE
  scalar mean and standard deviation of the training pixels (so images keep
  their spatial structure and the same numbers serve MLPs and CNNs).

  Args:
    images: ``(n, 8, 8, 1)`` images if True, else ``(n, 64)`` vectors (the
      same numbers).
    val_fraction: if > 0, a stratified validation split of this fraction of
      the training images (``random_state=0``) is carved from the training
      set before the standardization statistics are taken (for tuning; the
      test set stays the same 360 images).
    n_train, n_test: keep only the first ``n`` training / test images (quick
      runs), after standardization.

  Returns:
    A :class:`Digits`.
  """
  from sklearn import datasets
  from sklearn.model_selection import train_test_split

  digits = datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(
      x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SEED, stratify=y)
  x_val = y_val = None
  if val_fraction > 0:
    x_tr, x_val, y_tr, y_val = train_test_split(
        x_tr, y_tr, test_size=val_fraction, random_state=DIGITS_SEED,
        stratify=y_tr)
  mean, std = x_tr.mean(), x_tr.std()
  shape = (-1, 8, 8, 1) if images else (-1, 64)
  prep = lambda a, n=None: None if a is None else ((a - mean) / std)[:n].reshape(shape)
  return Digits(prep(x_tr, n_train), y_tr[:n_train], prep(x_te, n_test),
                y_te[:n_test], prep(x_val), y_val)


# ---------------------------------------------------------------------------
# Training loops

def _loss_only(loss, grads, opt_state):
  del grads, opt_state
  return loss


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


class FlaxRun(NamedTuple):
  """What :func:`make_flax_vmapped_run` returns (NumPy arrays; the leading
  axes are ``(seeds,)`` or ``(lrs, seeds)``)."""
  per_epoch: Any  # step_metrics means over each epoch's steps, (..., epochs, ...)
  per_step: Any   # step_metrics, (..., epochs * steps_per_epoch, ...)
  evaluation: Any  # evaluate after each epoch, (..., epochs, ...)
  seconds: float  # every run, with compilation


CURVES = ("train_loss", "train_acc", "test_loss", "test_acc")


def _as_factory(tx):
  """``tx`` itself as a ``lr -> tx`` factory that ignores ``lr``, or ``tx``."""
  if isinstance(tx, optax.GradientTransformation):
    return lambda lr: tx
  return tx


def _stack_configs(lrs, seeds):
  """Flattened ``(lr, seed)`` pairs, lr-major, and a reshape back."""
  lrs = [1.0] if lrs is None else list(lrs)
  pairs = [(lr, s) for lr in lrs for s in seeds]
  return pairs, (len(lrs), len(seeds))


#: XLA:CPU options of ``--quick``'s training programs (``compiler_options=``
#: of the vmapped runs below): optimization level 2 without LLVM's
#: expensive passes. A quick run is a few compiles and seconds of running
#: them; at the cheap-compile levels the test suite runs under (``XLA_FLAGS``,
#: tests/subproc.py) a scanned, vmapped CNN step runs slower (at level 0
#: ~10x: 2 s instead of 0.2 s per (step size, seed) pair of bng_cnn's quick
#: run), at XLA's default level 3 it compiles ~3x longer (bng_lstm's quick
#: run: 22 s instead of 13 s). Set per program, it holds whatever
#: ``XLA_FLAGS`` the caller runs under. Full runs keep XLA's defaults.
QUICK_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2,
                          "xla_llvm_disable_expensive_passes": True}


#: XLA:CPU options of a compile-bound quick program: LLVM -O0, which about
#: halves compile time, and always with XLA's current fusion emitters: the
#: test suite runs with the older ones (``--xla_cpu_use_fusion_emitters=false``
#: in ``XLA_FLAGS``, tests/subproc.py), and -O0 with those miscompiles (Scion's
#: spectral_conv LMO off by 6e-4 instead of 6e-9).
QUICK_CHEAP_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                               "xla_cpu_use_fusion_emitters": True}


def _pad_pairs(pairs, per_call):
  """``pairs`` padded (the last pair repeated) to a multiple of ``per_call``
  (all of them in one call when ``per_call`` is None)."""
  if per_call is None:
    return pairs, len(pairs)
  n = per_call * math.ceil(len(pairs) / per_call)
  return pairs + [pairs[-1]] * (n - len(pairs)), per_call


def _train_in_calls(train, per_call, n, batched, data_arrays):
  """``train(*batched, *data_arrays)`` over the padded pairs in calls of
  ``per_call``; the outputs as NumPy arrays, concatenated, first ``n`` kept
  (``batched``: pytrees whose leaves lead with the padded pairs)."""
  total = len(jax.tree.leaves(batched)[0])
  outs = [train(*jax.tree.map(lambda a, i=i: a[i:i + per_call], batched), *data_arrays)
          for i in range(0, total, per_call)]
  return jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a])[:n], *outs)


def _same_shapes(arrays, data: Digits):
  """``data``'s four arrays, which must have the shapes of ``arrays``."""
  new = tuple(jnp.asarray(a) for a in data[:4])
  if [a.shape for a in new] != [a.shape for a in arrays]:
    raise ValueError(f"data of shapes {[a.shape for a in new]}, the run's are "
                     f"{[a.shape for a in arrays]}")
  return new


def make_vmapped_run(tx, init_params: Callable, loss_fn: Callable,
                     metrics_fn: Callable, data: Digits, steps: int,
                     eval_every: int, batch: int, *,
                     pairs_per_call: int | None = None,
                     compiler_options: dict | None = None):
  """``run(seeds, lrs=None, data=None) -> curves``: training runs in one jit(vmap).

  ``tx`` is an optax transformation, or a factory ``lr -> transformation``
  (``lr`` a traced scalar: every step size of a grid runs in the same
  compiled program). ``init_params(numpy Generator) -> params``;
  ``loss_fn(params, x, y)`` is differentiated; ``metrics_fn(params, x, y) ->
  (loss, accuracy)`` is evaluated on the whole train and test sets before
  training and every ``eval_every`` steps. Initial parameters and batch
  order (a fresh permutation per epoch) come from
  ``np.random.default_rng(seed)``, outside the jitted function: random
  permutations inside jit dominate compile time on CPU; the same seed gives
  every step size and every optimizer the same initialization and batch
  order (paired runs). Every step is inside one ``lax.scan``: one compile per
  call of this function. ``curves`` has shape ``(seeds, steps // eval_every +
  1, 4)`` in the order of :data:`CURVES`, or ``(lrs, seeds, ...)`` when
  ``lrs`` is given. ``pairs_per_call``, ``compiler_options`` and
  ``data=``: as in :func:`make_flax_vmapped_run`.
  """
  make_tx = _as_factory(tx)
  arrays = tuple(jnp.asarray(a) for a in data[:4])
  n = arrays[0].shape[0]
  n_evals = steps // eval_every
  n_epochs = math.ceil(steps * batch / n)

  def one_run(params, idx, lr, xtr, ytr, xte, yte):
    tx = make_tx(lr)

    def evaluate(params):
      return jnp.stack([*metrics_fn(params, xtr, ytr),
                        *metrics_fn(params, xte, yte)])

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

  # The data are arguments, not constants (see make_flax_vmapped_run).
  train = jax.jit(jax.vmap(one_run, in_axes=(0, 0, 0) + (None,) * 4),
                  compiler_options=compiler_options)

  def run(seeds, lrs=None, data=None):
    pairs, shape = _stack_configs(lrs, seeds)
    padded, per_call = _pad_pairs(pairs, pairs_per_call)
    data_arrays = arrays if data is None else _same_shapes(arrays, data)
    inits, orders = [], []
    for _, seed in padded:
      rng = np.random.default_rng(seed)
      inits.append(init_params(rng))
      order = np.concatenate([rng.permutation(n) for _ in range(n_epochs)])
      orders.append(order[: steps * batch].reshape(n_evals, eval_every, batch))
    batched = (jax.tree.map(lambda *a: np.stack(a), *inits),
               np.stack(orders).astype(np.int32),
               np.asarray([lr for lr, _ in padded], np.float32))
    out = _train_in_calls(train, per_call, len(pairs), batched,
                          data_arrays).astype(np.float64)
    return out if lrs is None else out.reshape(shape + out.shape[1:])

  return run


def make_flax_vmapped_run(model, tx, data: Digits, batch_size: int,
                          epochs: int, step_metrics: Callable = _loss_only,
                          evaluate: Callable = accuracy, *,
                          pairs_per_call: int | None = None,
                          compiler_options: dict | None = None):
  """``run(seeds, lrs=None, data=None) -> FlaxRun``: a BatchNorm model in one jit(vmap).

  Softmax cross-entropy with BatchNorm in training mode, one fresh
  permutation of the training set per epoch: ``tx`` is an optax transformation or a factory ``lr ->
  transformation``; every (step size, seed) pair trains in one compiled
  program, every epoch of it in one ``lax.scan``. The seed sets the weight
  initialization (``jax.random.PRNGKey(seed)``) and the batch order (a fresh
  NumPy permutation per epoch, made outside jit), the same for every step
  size and optimizer. ``evaluate(logits, labels)`` runs on ``data.x_test``
  after every epoch (pass :func:`selection_split` data to evaluate on the
  validation split). Returns a :class:`FlaxRun` whose arrays lead with
  ``(seeds, ...)``, or ``(lrs, seeds, ...)`` when ``lrs`` is given;
  ``seconds`` covers compilation and every run.

  ``pairs_per_call``: train the pairs in calls of this many (the last call
  padded with copies of the last pair, whose results are dropped), so that
  calls with different numbers of pairs (a tuning grid, a widening step, the
  final seeds) run one compiled program; None (full runs): every pair of a
  call in one program of that size. ``compiler_options``: ``jax.jit``'s
  (:data:`QUICK_COMPILER_OPTIONS` for quick runs). ``run(..., data=other)``
  trains on other :class:`Digits` of the same shapes (a selection split and
  the final data, shaped alike in quick runs) in the same compiled program.
  """
  make_tx = _as_factory(tx)
  arrays = tuple(jnp.asarray(a) for a in data[:4])
  n = arrays[0].shape[0]
  steps = n // batch_size

  def loss_fn(params, stats, x, y):
    logits, new = model.apply(
        {"params": params, "batch_stats": stats}, x, train=True,
        mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, new["batch_stats"]

  def one_run(seed, order, lr, x_tr, y_tr, x_te, y_te):
    tx = make_tx(lr)
    variables = model.init(jax.random.PRNGKey(seed), x_tr[:2], train=False)
    params, stats = variables["params"], variables["batch_stats"]

    def step(carry, idx):
      params, stats, opt_state = carry
      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, stats, x_tr[idx], y_tr[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, stats, opt_state), step_metrics(loss, grads, opt_state)

    def epoch(carry, idx_epoch):
      carry, per_step = jax.lax.scan(step, carry, idx_epoch)
      params, stats, _ = carry
      logits = model.apply(
          {"params": params, "batch_stats": stats}, x_te, train=False)
      return carry, (per_step, evaluate(logits, y_te))

    _, (per_step, evaluation) = jax.lax.scan(
        epoch, (params, stats, tx.init(params)), order)
    return per_step, evaluation

  # The data are arguments, not constants baked into the program: runs of
  # different data with the same shapes (as --quick's selection and final
  # runs can be) compile to one program, shared through JAX's persistent
  # compilation cache, and XLA does not fold the data into its constants.
  train = jax.jit(jax.vmap(one_run, in_axes=(0, 0, 0) + (None,) * 4),
                  compiler_options=compiler_options)

  def run(seeds, lrs=None, data=None):
    pairs, shape = _stack_configs(lrs, seeds)
    data_arrays = arrays if data is None else _same_shapes(arrays, data)
    orders = []
    for _, seed in pairs:
      rng = np.random.default_rng(seed)
      orders.append(np.stack([rng.permutation(n)[: steps * batch_size]
                              .reshape(steps, batch_size) for _ in range(epochs)]))
    padded, per_call = _pad_pairs(pairs, pairs_per_call)
    orders += orders[-1:] * (len(padded) - len(pairs))
    batched = (np.asarray([s for _, s in padded], np.uint32),
               np.stack(orders).astype(np.int32),
               np.asarray([lr for lr, _ in padded], np.float32))
    t0 = time.perf_counter()
    per_step, evaluation = _train_in_calls(train, per_call, len(pairs), batched,
                                           data_arrays)
    lead = shape if lrs is not None else shape[1:]
    fix = lambda a: np.asarray(a).reshape(lead + a.shape[1:])
    per_step = jax.tree.map(fix, per_step)  # (..., epochs, steps, ...)
    evaluation = jax.tree.map(fix, evaluation)
    k = len(lead)
    flat = jax.tree.map(
        lambda a: a.reshape(a.shape[:k] + (-1,) + a.shape[k + 2:]), per_step)
    per_epoch = jax.tree.map(lambda a: a.mean(axis=k + 1), per_step)
    return FlaxRun(per_epoch=per_epoch, per_step=flat, evaluation=evaluation,
                   seconds=time.perf_counter() - t0)

  return run


def curves_dict(curves):
  """``(seeds, evals, 4)`` curves -> ``{name: nested list (seeds, evals)}``."""
  return {k: curves[:, :, i].tolist() for i, k in enumerate(CURVES)}


# ---------------------------------------------------------------------------
# Statistics

def mean_std(a, axis=None):
  """Mean and sample standard deviation (``ddof=1``; 0 for a single value).

  The one convention of every "mean ± std over seeds" the benchmarks print.
  """
  a = np.asarray(a, np.float64)
  n = a.size if axis is None else a.shape[axis]
  std = a.std(axis=axis, ddof=1) if n > 1 else np.zeros_like(a.mean(axis=axis))
  if axis is None:
    return float(a.mean()), float(std)
  return a.mean(axis=axis), std


# ---------------------------------------------------------------------------
# Tuning protocol: every optimizer at its own step size

#: Seeds of the step-size selection runs (validation split).
SELECT_SEEDS = (1000, 1001)
#: Fresh seeds of the reported runs at the chosen step size (test split).
FINAL_SEEDS = (0, 1, 2, 3, 4)
#: Ratio between neighbouring step sizes of a grid.
GRID_STEP = math.sqrt(10.0)
#: The validation split carved from the training set for selection.
VAL_FRACTION = 0.2

TUNING_RULE = (
    f"Each optimizer gets its own step size: a log grid of at least 5 values "
    f"about sqrt(10) apart, run with {len(SELECT_SEEDS)} seeds on a "
    f"{VAL_FRACTION:.0%} validation split carved from the training set; the "
    f"step size with the lowest mean final validation loss (a diverged run "
    f"counts as infinite) is chosen, and the grid is widened while the choice "
    f"is at its edge. {len(FINAL_SEEDS)} fresh seeds then train at the chosen "
    f"step size on the whole training set; only those runs are reported, on "
    f"the test set. Every optimizer of a comparison gets the same number of "
    f"steps.")


def log_grid(center: float, n: int = 5, step: float = GRID_STEP) -> list[float]:
  """``n`` step sizes ``step`` apart in log space, centred on ``center``.

  >>> [float(f"{x:.3g}") for x in log_grid(1e-3)]
  [0.0001, 0.000316, 0.001, 0.00316, 0.01]
  """
  return [_round_lr(center * step ** (k - (n - 1) / 2)) for k in range(n)]


def _round_lr(lr: float) -> float:
  """Four significant digits: readable in JSON, the grid ratio kept."""
  return float(f"{lr:.4g}")


def selection_split(data: Digits) -> Digits:
  """Data for step-size selection: train on the train split minus the
  validation split, "test" on the validation split (the test set unseen)."""
  if data.x_val is None:
    raise ValueError("selection_split needs data loaded with val_fraction > 0")
  return data._replace(x_test=data.x_val, y_test=data.y_val,
                       x_val=None, y_val=None)


def tuning_data(images: bool = False, n_train: int | None = None,
                n_eval: int | None = None) -> tuple[Digits, Digits]:
  """``(data, selection data)``: the final runs' (the training and test
  sets) and :func:`selection_split`'s. ``n_train``/``n_eval`` (quick runs)
  keep the first images of each set; with both given, the two phases' data
  have the same shapes, so one compiled program serves both."""
  data = load_digits(images=images, n_train=n_train, n_test=n_eval)
  select = selection_split(load_digits(images=images, val_fraction=VAL_FRACTION,
                                       n_train=n_train))
  return data, select._replace(x_test=select.x_test[:n_eval],
                               y_test=select.y_test[:n_eval])


def tune_lr(evaluate: Callable, grid: Sequence[float],
            seeds: Sequence[int] = SELECT_SEEDS, max_widen: int = 3,
            step: float = GRID_STEP) -> dict:
  """Chooses a step size by validation loss; widens the grid at an edge.

  ``evaluate(lrs, seeds)`` trains one run per (step size, seed) on the
  selection split and returns final validation losses, shape ``(len(lrs),
  len(seeds))``. A non-finite loss (a diverged run) counts as ``inf``. The
  step size with the lowest mean wins; while it is the smallest or the
  largest one tried, one more value ``step`` beyond it is tried (at most
  ``max_widen`` times). Returns the JSON record: ``grid`` (sorted),
  ``val_loss`` (per step size, per seed), ``chosen``, ``interior`` (False if
  the choice is still at an edge), ``seeds``, ``widened``.
  """
  seeds = list(seeds)
  scores: dict[float, np.ndarray] = {}

  def add(lrs):
    vals = np.asarray(evaluate(list(lrs), seeds), np.float64)
    if vals.shape != (len(lrs), len(seeds)):
      raise ValueError(f"evaluate returned shape {vals.shape}, expected "
                       f"{(len(lrs), len(seeds))}")
    for lr, row in zip(lrs, vals, strict=True):
      scores[float(lr)] = np.where(np.isfinite(row), row, np.inf)

  add(sorted(grid))
  widened = 0
  while True:
    lrs = sorted(scores)
    means = [float(np.mean(scores[lr])) for lr in lrs]
    best = int(np.argmin(means))
    interior = 0 < best < len(lrs) - 1
    if interior or widened >= max_widen:
      break
    add([_round_lr(lrs[0] / step) if best == 0 else _round_lr(lrs[-1] * step)])
    widened += 1
  clean = lambda v: [x if math.isfinite(x) else None for x in v]
  return {"grid": lrs, "val_loss": [clean(scores[lr].tolist()) for lr in lrs],
          "mean_val_loss": clean(means), "chosen": lrs[best],
          "interior": interior, "seeds": seeds, "widened": widened}


# ---------------------------------------------------------------------------
# The verdict rule

CONFIDENCE = 0.95
VERDICT_RULE = (
    "A claim \"A beats B\" is judged on the paired difference A − B over the "
    "final seeds (seed i of A and of B share the initialization and the batch "
    "order): its mean with a two-sided 95% Student-t confidence interval. "
    "Holds: the interval excludes 0 in the paper's direction; reversed: it "
    "excludes 0 the other way; within noise: it contains 0.")


def paired_ci(a, b, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
  """Mean of the paired differences ``a - b`` and its Student-t CI (lo, hi)."""
  from scipy import stats

  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if d.ndim != 1 or d.size < 2:
    raise ValueError(f"paired_ci needs two 1-D arrays of >= 2 seeds, got {d.shape}")
  mean = float(d.mean())
  half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)
               * d.std(ddof=1) / math.sqrt(d.size))
  return mean, mean - half, mean + half


def claim(text: str, a, b, *, lower_is_better: bool = True,
          metric: str = "", paper: str | None = None, **extra) -> dict:
  """One claim "``a`` beats ``b``" judged by :data:`VERDICT_RULE`.

  ``a`` and ``b`` are per-seed final values of the metric (same seeds, same
  order). Returns the JSON record every benchmark writes: ``claim``,
  ``metric``, ``diff`` (mean of ``a - b``), ``ci`` ([lo, hi]), ``n``,
  ``lower_is_better``, ``verdict`` ("holds", "reversed" or "within noise"),
  ``paper`` (the paper's number or statement, if known) and ``extra``.
  """
  mean, lo, hi = paired_ci(a, b)
  better, worse = (hi < 0, lo > 0) if lower_is_better else (lo > 0, hi < 0)
  v = "holds" if better else "reversed" if worse else "within noise"
  return dict(claim=text, metric=metric, diff=mean, ci=[lo, hi],
              n=int(np.size(a)), lower_is_better=lower_is_better, verdict=v,
              paper=paper, **extra)


def format_ci(c: dict, scale: float = 1.0, digits: int = 2) -> str:
  """``+1.23 [+0.50, +1.96]``: a claim's mean difference and CI."""
  f = lambda x: f"{scale * x:+.{digits}f}"
  return f"{f(c['diff'])} [{f(c['ci'][0])}, {f(c['ci'][1])}]"


# ---------------------------------------------------------------------------
# Compile timing

@contextlib.contextmanager
def timed_compiles():
  """A block whose compiles are all real: none is written to JAX's
  persistent compilation cache, so no later "fresh" compile of the same
  program reads one back.

  The cache is off unless ``JAX_COMPILATION_CACHE_DIR`` is set (the test
  suite sets it for its session); a benchmark that times compiles runs its
  measurements in this block. Only writes can be switched off once JAX has
  started (it decides once whether the cache is used), so the block must
  hold every compile of the programs it times.
  """
  key = "jax_persistent_cache_min_compile_time_secs"
  before = getattr(jax.config, key)
  jax.config.update(key, float("inf"))
  try:
    yield
  finally:
    jax.config.update(key, before)


# ---------------------------------------------------------------------------
# Output

def machine_info(extra: str = "") -> str:
  """One line: CPU, core count, load at the start, the package versions that
  decide the numbers (jax, jaxlib, optax, flax, numpy) and the backend."""
  from importlib import metadata

  dev = jax.devices()[0]
  backend = jax.default_backend()
  kind = "" if backend == "cpu" else f" {dev.device_kind} x{jax.device_count()}"
  try:
    load = f", load {os.getloadavg()[0]:.1f} at start"
  except OSError:
    load = ""
  versions = []
  for pkg in ("jax", "jaxlib", "optax", "flax", "numpy"):
    try:
      versions.append(f"{pkg} {metadata.version(pkg)}")
    except metadata.PackageNotFoundError:
      pass
  return (f"{platform.machine()} CPU x{os.cpu_count()}{load} "
          f"({', '.join(versions)}, {backend}{kind}){extra}")


def _provenance(payload: dict) -> str:
  """The markdown footer: the data convention and the machine, where recorded."""
  cfg = payload.get("config")
  cfg = cfg if isinstance(cfg, dict) else {}
  lines = []
  for key, label in (("data", "Data"), ("machine", "Ran on")):
    value = cfg.get(key, payload.get(key))
    if value:
      lines += ["", f"{label}: {value}."]
  return "\n".join(lines) + "\n"


def write_results(out_dir, name: str, payload: dict, markdown: str,
                  figures: dict[str, Callable] | None = None) -> list[pathlib.Path]:
  """Writes ``name.json``, ``name.md`` and the figures; returns their paths.

  The markdown gets a footer with ``data`` and ``machine`` from the payload
  (its ``config`` first). ``figures`` maps a file name to ``draw(payload)``,
  which returns a matplotlib figure; :func:`save_figure` lays it out so that
  its text fits, saves it at :data:`FIGURE_DPI` and closes it.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = [out / f"{name}.json", out / f"{name}.md"]
  paths[0].write_text(json.dumps(payload, indent=1))
  paths[1].write_text(markdown.rstrip("\n") + "\n" + _provenance(payload))
  for filename, draw in (figures or {}).items():
    import matplotlib
    matplotlib.use("Agg")
    save_figure(draw(payload), out / filename)
    paths.append(out / filename)
  print(f"wrote {', '.join(p.name for p in paths)} to {out}")
  return paths


# ---------------------------------------------------------------------------
# Figures

FIGURE_DPI = 110


def figure_texts(fig) -> list:
  """The figure's titles and axis labels (suptitle, supxlabel/supylabel, every
  axes' three titles and two labels): visible and non-empty ones."""
  texts = [getattr(fig, f"_{k}", None) for k in ("suptitle", "supxlabel", "supylabel")]
  for ax in fig.axes:
    texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
  return [t for t in texts if t is not None and t.get_visible() and t.get_text()]


def _outside(fig, tol: float = 0.5) -> list:
  renderer = fig.canvas.get_renderer()
  box = fig.bbox
  outside = []
  for t in figure_texts(fig):
    e = t.get_window_extent(renderer)
    if (e.x0 < box.x0 - tol or e.y0 < box.y0 - tol or e.x1 > box.x1 + tol
        or e.y1 > box.y1 + tol):
      outside.append(t)
  return outside


def text_outside(fig, tol: float = 0.5) -> list[str]:
  """The texts of :func:`figure_texts` whose drawn extent (renderer
  ``fig.canvas.get_renderer()``) leaves ``fig.bbox`` by more than ``tol``
  pixels; empty when every title and label fits."""
  return [t.get_text() for t in _outside(fig, tol)]


def _wrap_to_fit(fig, text) -> None:
  """Re-wraps ``text`` at word boundaries so that its long side fits the room
  it has: the figure's width for figure-level texts, else its axes' side."""
  import textwrap

  renderer = fig.canvas.get_renderer()
  e = text.get_window_extent(renderer)
  vertical = e.height > e.width
  ax = getattr(text, "axes", None)
  room = fig.bbox if ax is None else ax.bbox
  room = min(room.height if vertical else room.width,
             fig.bbox.height if vertical else fig.bbox.width)
  size = e.height if vertical else e.width
  lines = text.get_text().split("\n")
  width = max(len(line) for line in lines)
  chars = max(8, int(width * 0.95 * room / max(size, 1.0)))
  if chars < width:
    text.set_text("\n".join(textwrap.fill(line, chars) for line in lines))
  else:  # already as narrow as wrapping makes it: shrink the font
    text.set_fontsize(text.get_fontsize() * 0.9)


def fit_figure(fig, tries: int = 6) -> None:
  """Lays ``fig`` out (``tight_layout``) so that every title and axis label
  lies inside it: a text that still leaves the figure is wrapped at word
  boundaries (or, if it cannot be, shrunk) and the layout redone. Raises
  ``ValueError`` naming the texts that still do not fit."""
  import warnings

  for _ in range(tries + 1):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # "not compatible with tight_layout"
      fig.tight_layout()
    bad = _outside(fig)
    if not bad:
      return
    for t in bad:
      _wrap_to_fit(fig, t)
  raise ValueError(f"figure text does not fit: {text_outside(fig)}")


def save_figure(fig, path, dpi: int = FIGURE_DPI) -> pathlib.Path:
  """The one way a benchmark saves a figure: :func:`fit_figure`, save at
  ``dpi``, close. Returns the path."""
  import matplotlib.pyplot as plt

  fit_figure(fig)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return pathlib.Path(path)


# ---------------------------------------------------------------------------
# CLI

def make_parser(doc: str, quick_help: str = "a tiny run (seconds), for tests"):
  """An ``ArgumentParser`` with the shared ``--quick``, ``--out`` and ``--quiet``."""
  parser = argparse.ArgumentParser(
      description=doc.strip().splitlines()[0],
      epilog="Quick or partial runs never write into benchmarks/results/: they "
      "write to --out, or to a fresh temporary folder without it.")
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument(
      "--out", default=None,
      help="output folder (full run: default benchmarks/results; quick or "
      "partial run: default a new temporary folder, never benchmarks/results)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  return parser


def check_same_config(parts: Sequence[dict], part_keys: Sequence[str]) -> None:
  """Raises unless every part's ``config`` agrees outside ``part_keys``.

  For ``--merge``: runs of disjoint method subsets, side by side as separate
  processes, must share everything else (epochs, seeds, grid rule...).
  """
  strip = lambda part: {k: v for k, v in part["config"].items()
                        if k not in part_keys}
  base = strip(parts[0])
  for part in parts:
    cfg = strip(part)
    if cfg != base:
      raise ValueError("parts of different configurations: "
                       f"{sorted(k for k in cfg if cfg[k] != base.get(k))}")


def add_merge_arg(parser, name: str, subsets: str) -> None:
  """The ``--merge DIR...`` option of a benchmark run in parts."""
  parser.add_argument(
      "--merge", nargs="+", default=None, metavar="DIR",
      help=f"no training: merge the {name}.json of runs of disjoint "
      f"{subsets} subsets (same configuration) into one result")


def run_merge(parser, args, name: str, merge: Callable, markdown: Callable,
              figures: dict[str, Callable]) -> dict:
  """``--merge``: reads ``<dir>/<name>.json`` of every part, merges them with
  ``merge(parts) -> (result, complete)`` and writes the result; an
  incomplete set is a partial run (never into ``benchmarks/results/``)."""
  parts = [json.loads((pathlib.Path(d) / f"{name}.json").read_text())
           for d in args.merge]
  result, complete = merge(parts)
  out = output_dir(parser, args, name, partial=not complete)
  write_results(out, name, result, markdown(result), figures)
  return result


def output_dir(parser, args, name: str, partial: bool = False) -> pathlib.Path:
  """Where this run writes, by the one policy (see the module docstring).

  ``partial``: the run departs from the committed full configuration (fewer
  methods, epochs, ...) and so, like ``--quick``, must not replace the
  committed results.
  """
  if not (args.quick or partial):
    return pathlib.Path(args.out) if args.out else RESULTS_DIR
  if args.out is None:
    return pathlib.Path(tempfile.mkdtemp(prefix=f"{name}_quick_"))
  out = pathlib.Path(args.out).resolve()
  if out == RESULTS_DIR or RESULTS_DIR in out.parents:
    parser.error("a --quick or partial run never writes into benchmarks/results/")
  return out

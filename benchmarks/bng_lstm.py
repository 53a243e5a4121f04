"""BNG Fig. 3 in small: a 2-layer LSTM character language model.

Yu et al. (2017), "Block-Normalized Gradient Method", Fig. 3, train a
character-level LSTM with truncated back-propagation through time (BPTT) of
two lengths and compare each optimizer with its block-normalized ("NG") form:
Adam vs AdamNG, AdaGrad vs AdaGradNG, SGD-momentum vs SGDM-NG. The paper's
claims: NG speeds up training, more so for the long BPTT length, and the
adaptive methods (Adam) do best on recurrent networks.

Here the text is CPython's ``pydoc_data.topics`` (real English, ~465k
characters, ~100 distinct characters): the first 90% trains, the last 10%
validates (the reported numbers). The model is embedding -> LSTM -> LSTM ->
softmax, written in plain JAX with ``lax.scan`` over time; each LSTM layer is
one block (one kernel on ``[x, h]`` plus its bias). Both BPTT lengths see the
same number of characters per update (``batch * length`` fixed), so a step
costs about the same. No gradient clipping anywhere; constant step sizes.

Every optimizer gets its own step size (``_common.TUNING_RULE``): a log grid
about sqrt(10) apart, trained with 2 selection seeds on the training text minus
its last 20%, chosen by the validation loss on that held-out 20% (never the
reported validation text); then 5 fresh seeds train on the whole training text
at the chosen step size and are evaluated on the validation text. Every
(step size, seed) pair of a phase trains in one ``jit(vmap)``. A seed sets the
initialization and the training windows, the same for every optimizer and step
size, so the claims are paired (``_common.VERDICT_RULE``). Validation loss
(nats per character) is measured on fixed windows of the run's own length, each
started from a zero state.

Run from the repository root::

  python benchmarks/bng_lstm.py            # full: writes benchmarks/results/bng_lstm.*
  python benchmarks/bng_lstm.py --quick   # a few seconds, into a temp folder
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import _common
import normopt

#: Grid centres (the old shared defaults: char-rnn's Adam 2e-3, AdaGrad and
#: SGDM 0.1); each optimizer is then tuned on its own grid.
CENTRES = {"Adam": 2e-3, "AdamNG": 2e-3, "AdaGrad": 0.1, "AdaGradNG": 0.1,
           "SGDM": 0.3162, "SGDM-NG": 0.1}
MOMENTUM = 0.9
#: A diverged final run counts as this loss in the claims (uniform guess ~4.6).
DIVERGED = 10.0

FACTORIES = {
    "Adam": optax.adam,
    "AdamNG": normopt.adam_ng,
    "AdaGrad": optax.adagrad,
    "AdaGradNG": normopt.adagrad_ng,
    "SGDM": lambda lr: optax.sgd(lr, momentum=MOMENTUM),
    "SGDM-NG": lambda lr: normopt.sgd_ng(lr, momentum=MOMENTUM),
}
PAIRS = (("AdamNG", "Adam"), ("AdaGradNG", "AdaGrad"), ("SGDM-NG", "SGDM"))


def load_text(val_fraction=0.1):
  from pydoc_data import topics

  text = "".join(topics.topics[k] for k in sorted(topics.topics))
  vocab = sorted(set(text))
  index = {c: i for i, c in enumerate(vocab)}
  ids = np.fromiter((index[c] for c in text), np.int32, len(text))
  split = int(len(ids) * (1 - val_fraction))
  return ids[:split], ids[split:], vocab


def selection_text(train_ids, val_fraction=_common.VAL_FRACTION):
  """The step-size selection split: the training text minus its last
  ``val_fraction``, and that held-out tail (the reported validation text is
  never seen while choosing)."""
  split = int(len(train_ids) * (1 - val_fraction))
  return train_ids[:split], train_ids[split:]


def init_params(key, vocab_size, embed, hidden):
  """Embedding, two LSTM layers (kernel on ``[x, h]``, bias), output layer."""
  k = jax.random.split(key, 4)

  def lstm(key, n_in):
    kernel = jax.random.normal(key, (n_in + hidden, 4 * hidden)) / math.sqrt(
        n_in + hidden)
    # Gate order i, f, g, o; forget-gate bias 1.
    bias = jnp.zeros(4 * hidden).at[hidden:2 * hidden].set(1.0)
    return {"kernel": kernel, "bias": bias}

  return {
      "embed": {"embedding": jax.random.normal(k[0], (vocab_size, embed))},
      "lstm_0": lstm(k[1], embed),
      "lstm_1": lstm(k[2], hidden),
      "out": {
          "kernel": jax.random.normal(k[3], (hidden, vocab_size))
                    / math.sqrt(hidden),
          "bias": jnp.zeros(vocab_size),
      },
  }


def lstm_layer(p, xs):
  """``xs``: (time, batch, in) -> (time, batch, hidden), from a zero state."""
  n_in = xs.shape[-1]
  w_x, w_h = p["kernel"][:n_in], p["kernel"][n_in:]
  hidden = w_h.shape[0]
  x_proj = xs @ w_x + p["bias"]  # input projection for all steps at once

  def cell(carry, z_x):
    h, c = carry
    z = z_x + h @ w_h
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  zeros = jnp.zeros((xs.shape[1], hidden), xs.dtype)
  _, hs = jax.lax.scan(cell, (zeros, zeros), x_proj)
  return hs


def loss_fn(params, seq):
  """Mean next-character cross-entropy (nats); ``seq``: (batch, length + 1)."""
  inputs, targets = seq[:, :-1].T, seq[:, 1:].T  # time-major
  h = params["embed"]["embedding"][inputs]
  h = lstm_layer(params["lstm_0"], h)
  h = lstm_layer(params["lstm_1"], h)
  logits = h @ params["out"]["kernel"] + params["out"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def eval_windows(val_ids, length, val_chars):
  """Fixed, non-overlapping validation windows ``(n, length + 1)``."""
  n = min(val_chars // length, (len(val_ids) - 1) // length)
  starts = np.arange(n) * length
  return val_ids[starts[:, None] + np.arange(length + 1)]


def make_lm_run(make_tx, *, vocab_size, embed, hidden, length, batch, steps,
                eval_every, chunk=5, compiler_options=None):
  """``run(seeds, lrs, text, n_train, val_windows) -> dict``: vmapped LM runs.

  ``make_tx(lr)`` builds the optimizer from a traced step size. Every
  (step size, seed) pair trains in a ``jit(vmap)``, ``chunk`` pairs per call
  (the last call padded), so one compiled program serves the selection grid,
  the final seeds and both splits: training windows come from
  ``text[:n_train]`` (``n_train`` is an argument, so the selection split,
  a prefix of the training text, needs no second program).
  A seed gives the initialization (``split(PRNGKey(seed))[0]``) and the
  random training windows (``[1]``), the same for every step size and
  optimizer. The loss on ``val_windows`` (see :func:`eval_windows`) is taken
  before training and after every ``eval_every`` updates. Returns NumPy
  arrays with leading axes ``(lrs, seeds)``: ``val_loss`` ``(...,
  steps // eval_every + 1)``, ``train_loss`` (mean over each chunk of
  updates, ``(..., steps // eval_every)``), and ``seconds``.
  ``compiler_options``: ``jax.jit``'s (``--quick``:
  ``_common.QUICK_COMPILER_OPTIONS``).
  """
  offsets = jnp.arange(length + 1)
  n_chunks = steps // eval_every

  def one_run(seed, lr, data, n_train, val):
    k_init, k_data = jax.random.split(jax.random.PRNGKey(seed))
    tx = make_tx(lr)
    params = init_params(k_init, vocab_size, embed, hidden)
    max_start = n_train - length - 1

    def step(carry, key):
      params, opt_state = carry
      starts = jax.random.randint(key, (batch,), 0, max_start)
      loss, grads = jax.value_and_grad(loss_fn)(
          params, data[starts[:, None] + offsets])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    def evaluate(carry, keys):
      carry, losses = jax.lax.scan(step, carry, keys)
      return carry, (loss_fn(carry[0], val), jnp.mean(losses))

    keys = jax.random.split(k_data, n_chunks * eval_every).reshape(
        n_chunks, eval_every, -1)
    _, (vals, trains) = jax.lax.scan(evaluate, (params, tx.init(params)), keys)
    return jnp.concatenate([loss_fn(params, val)[None], vals]), trains

  train = jax.jit(jax.vmap(one_run, in_axes=(0, 0, None, None, None)),
                  compiler_options=compiler_options)

  def run(seeds, lrs, text, n_train, val_windows):
    pairs = [(lr, s) for lr in lrs for s in seeds]
    n = len(pairs)
    size = min(chunk, n)
    pairs += pairs[-1:] * (-n % size)  # pad the last call to the same shape
    data, val = jnp.asarray(text), jnp.asarray(val_windows)
    n_train = jnp.asarray(n_train, jnp.int32)
    t0 = time.perf_counter()
    outs = [train(jnp.asarray([s for _, s in part], jnp.uint32),
                  jnp.asarray([lr for lr, _ in part], jnp.float32), data,
                  n_train, val)
            for part in (pairs[i:i + size] for i in range(0, len(pairs), size))]
    vals, trains = (np.concatenate([np.asarray(o[k], np.float64) for o in outs])
                    [:n] for k in (0, 1))
    shape = (len(lrs), len(seeds))
    return {"val_loss": vals.reshape(shape + vals.shape[1:]),
            "train_loss": trains.reshape(shape + trains.shape[1:]),
            "seconds": time.perf_counter() - t0}

  return run


def _clean(a):
  """Nested lists with non-finite values as ``None`` (JSON)."""
  a = np.asarray(a, np.float64)
  return np.where(np.isfinite(a), a, np.nan).tolist() if a.ndim == 0 else [
      _clean(x) for x in a] if a.ndim > 1 else [
          float(x) if math.isfinite(x) else None for x in a]


def _capped(values):
  """Per-seed losses with a diverged run counted as :data:`DIVERGED`."""
  v = np.asarray([np.nan if x is None else x for x in values], np.float64)
  return np.where(np.isfinite(v), np.minimum(v, DIVERGED), DIVERGED)


def compute_claims(result):
  """``result["claims"]``: paired claims per BPTT length and across lengths."""
  runs = result["runs"]
  lengths = sorted(runs, key=int)
  methods = set(next(iter(runs.values())))
  at = lambda r, when: _capped(r["final_val_loss"] if when == "final"
                               else r["val_loss_25"])
  claims = []
  fig3 = ("Fig. 3: the NG form's validation curve lies below its base's, "
          "for BPTT 40 and 400 (curves, no table)")
  for length in lengths:
    group = f"BPTT {length}"
    for ng, base in PAIRS + (("AdamNG", "SGDM-NG"),):
      if ng not in methods or base not in methods:
        continue
      text = (f"on RNNs {ng} beats {base}" if base == "SGDM-NG" else
              f"{ng} reaches a lower validation loss than {base}")
      paper = ("§4/Fig. 3: adaptive step sizes (AdamNG) do best on RNNs; "
               "SGD+Mom with NG does best on CNNs" if base == "SGDM-NG"
               else fig3)
      for when in ("final", "after 25% of updates"):
        r = runs[length]
        claims.append(_common.claim(
            text, at(r[ng], when), at(r[base], when),
            metric="validation loss (nats/char)", paper=paper, group=group,
            when=when, better=ng, worse=base, length=int(length)))
  if len(lengths) >= 2:
    short, long_ = lengths[0], lengths[-1]
    for ng, base in PAIRS:
      if ng not in methods or base not in methods:
        continue
      gain = {l: at(runs[l][ng], "final") - at(runs[l][base], "final")
              for l in (short, long_)}
      claims.append(_common.claim(
          f"{ng}'s gain over {base} is larger at BPTT {long_} than at {short}",
          gain[long_], gain[short], metric="difference of paired differences "
          "(NG minus plain, nats/char)",
          paper="Fig. 3: NG helps more for the longer BPTT length",
          group="BPTT length", when="final", better=ng, worse=base,
          gain={l: g.tolist() for l, g in gain.items()}))
  result["claims"] = claims


def plot(result):
  import matplotlib.pyplot as plt

  lengths = list(result["runs"])
  fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4.5),
                           squeeze=False)
  colors = {"Adam": "C0", "AdaGrad": "C1", "SGDM": "C2"}
  steps = result["config"]["eval_steps"]
  for ax, length in zip(axes[0], lengths, strict=True):
    for name, r in result["runs"][length].items():
      base = name.replace("NG", "").rstrip("-")
      vals = np.asarray([[np.nan if v is None else v for v in s]
                         for s in r["val_loss"]])
      m = np.nanmean(vals, axis=0)
      ax.plot(steps, m, color=colors[base], ls="-" if "NG" in name else "--",
              label=f"{name} (lr {r['lr']:.3g})")
      ax.fill_between(steps, np.nanmin(vals, 0), np.nanmax(vals, 0),
                      color=colors[base], alpha=0.15)
    ax.set_title(f"BPTT length {length}")
    ax.set_xlabel("update")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(top=min(4.7, ax.get_ylim()[1]))
    ax.legend(fontsize=8)
  n = len(result["config"]["final_seeds"])
  fig.suptitle("BNG Fig. 3 in small: 2-layer LSTM char LM on pydoc topics, "
               "tuned step sizes\n(solid: NG, dashed: plain; mean and range "
               f"over {n} seeds)")
  return fig


def markdown(result):
  lengths = list(result["runs"])
  cfg = result["config"]
  lines = [
      "# BNG Fig. 3 in small: 2-layer LSTM character LM",
      "",
      f"hidden {cfg['hidden']}, embedding {cfg['embed']}, {cfg['steps']} "
      f"updates of {cfg['chars_per_update']} characters (batch "
      + ", ".join(f"{b} at BPTT {l}" for l, b in cfg["batch"].items())
      + "), constant step sizes, each tuned per optimizer and BPTT length; "
      f"{len(cfg['final_seeds'])} final seeds. Validation loss in nats/char "
      f"on the validation text (uniform guess: "
      f"{math.log(cfg['vocab_size']):.2f}). Wall time of the whole run "
      f"(selection and final runs): {cfg.get('wall_seconds', 0):.0f} s" + (
          f" (the longest of {len(cfg['parts'])} processes run side by side, "
          f"one per (length, method) subset)" if cfg.get("parts") else "") + ".",
      "",
      "| BPTT | method | chosen lr | grid | interior | final val loss "
      "(mean ± std) | after 25% |",
      "|---|---|---|---|---|---|---|",
  ]
  for l in lengths:
    for name, r in result["runs"][l].items():
      t = result["tuning"][l][name]
      m, s = _common.mean_std(_capped(r["final_val_loss"]))
      m25, s25 = _common.mean_std(_capped(r["val_loss_25"]))
      lines.append(
          f"| {l} | {name} | {t['chosen']:.4g} | {t['grid'][0]:.3g}–"
          f"{t['grid'][-1]:.3g} ({len(t['grid'])}) | "
          f"{'yes' if t['interior'] else 'no'} | {m:.3f} ± {s:.3f} | "
          f"{m25:.3f} ± {s25:.3f} |")
  lines += ["", "| group | claim | when | difference (nats/char) [95% CI] | "
            "verdict |", "|---|---|---|---|---|"]
  for c in result["claims"]:
    lines.append(f"| {c['group']} | {c['claim']} | {c['when']} | "
                 f"{_common.format_ci(c, digits=3)} | {c['verdict']} |")
  lines += ["", "Differences: first method minus second, per seed, then "
            "averaged (negative: the claim's direction). Across lengths: the "
            "per-seed gain (NG minus plain) at the long length minus the gain "
            "at the short one. A diverged final run counts as "
            f"{DIVERGED} nats.", "", f"Tuning: {_common.TUNING_RULE} Here the "
            "selection split is the last 20% of the training text; the grid "
            "and the selection losses are in the JSON.", "",
            f"Verdicts: {_common.VERDICT_RULE}"]
  return "\n".join(lines) + "\n"


#: Config keys that may differ between parts of one run (see ``--merge``).
_PART_KEYS = ("machine", "wall_seconds", "grid_centres", "lengths", "batch")


def merge(parts):
  """One result from the JSONs of runs of disjoint (length, method) subsets.

  The parts must share every config entry but :data:`_PART_KEYS`; they ran
  side by side as separate processes on the shared machine. Claims are
  recomputed from the merged per-seed values. Returns ``(result,
  complete)``.
  """
  _common.check_same_config(parts, _PART_KEYS)
  result = {"config": dict(parts[0]["config"]), "tuning": {}, "runs": {}}
  for part in parts:
    for length, runs in part["runs"].items():
      if set(runs) & set(result["runs"].get(length, {})):
        raise ValueError("parts overlap")
      result["runs"].setdefault(length, {}).update(runs)
      result["tuning"].setdefault(length, {}).update(part["tuning"][length])
  lengths = sorted(result["runs"], key=int)
  order = list(FACTORIES)
  result["runs"] = {l: {n: result["runs"][l][n] for n in order
                        if n in result["runs"][l]} for l in lengths}
  result["tuning"] = {l: {n: result["tuning"][l][n] for n in order
                          if n in result["tuning"][l]} for l in lengths}
  cfg = result["config"]
  cfg["lengths"] = [int(l) for l in lengths]
  cfg["batch"] = {l: cfg["chars_per_update"] // int(l) for l in lengths}
  cfg["grid_centres"] = {n: CENTRES[n] for n in order
                         if any(n in r for r in result["runs"].values())}
  cfg["parts"] = [{"runs": {l: list(r) for l, r in p["runs"].items()},
                   "wall_seconds": p["config"]["wall_seconds"],
                   "machine": p["config"]["machine"]} for p in parts]
  cfg["wall_seconds"] = max(p["config"]["wall_seconds"] for p in parts)
  cfg["machine"] = (f"{parts[0]['config']['machine']}; {len(parts)} "
                    "processes side by side, one per (length, method) subset")
  compute_claims(result)
  complete = (lengths == ["40", "400"] and not cfg["quick"] and all(
      list(r) == order for r in result["runs"].values()))
  return result, complete


def main(argv=None):
  parser = _common.make_parser(
      __doc__, "tiny model, one BPTT length, two optimizers (seconds)")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--lengths", type=int, nargs="*", default=None)
  parser.add_argument("--methods", nargs="*", default=None)
  _common.add_merge_arg(parser, "bng_lstm", "--lengths/--methods")
  args = parser.parse_args(argv)
  if args.merge:
    return _common.run_merge(parser, args, "bng_lstm", merge, markdown,
                             {"bng_lstm.png": plot})
  out = _common.output_dir(
      parser, args, "bng_lstm",
      partial=bool(args.steps or args.lengths or args.methods))

  quick = args.quick
  lengths = args.lengths or ([16] if quick else [40, 400])
  chars_per_update = 320 if quick else 1600
  # Shrunk for the shared 2-core machine (the pre-#14 run: hidden 64, 1,000
  # updates, one run per optimizer; now 15+ runs per optimizer and length).
  hidden, embed = (16, 8) if quick else (32, 16)
  steps = args.steps or (40 if quick else 160)
  eval_every = 10 if quick else 40
  val_chars = 2000 if quick else 10000
  max_widen = 1 if quick else 3
  final_seeds = list(_common.FINAL_SEEDS[:2] if quick else _common.FINAL_SEEDS)
  # One compiled program per optimizer and length: quick runs every call in
  # pairs (grid, widening and final seeds alike), full runs in fives.
  chunk = 2 if quick else 5
  select_seeds = list(_common.SELECT_SEEDS)

  train_ids, val_ids, vocab = load_text()
  sel_train, sel_val = selection_text(train_ids)
  names = args.methods or (["Adam", "AdamNG"] if quick else list(FACTORIES))

  result = {
      "config": {
          "lengths": lengths, "chars_per_update": chars_per_update,
          "batch": {str(l): chars_per_update // l for l in lengths},
          "hidden": hidden, "embed": embed, "steps": steps,
          "eval_every": eval_every,
          "eval_steps": list(range(0, steps + 1, eval_every)),
          "val_chars": val_chars, "momentum": MOMENTUM, "vmap_chunk": chunk,
          "grid_centres": {k: CENTRES[k] for k in names},
          "select_seeds": select_seeds, "final_seeds": final_seeds,
          "max_widen": max_widen, "vocab_size": len(vocab),
          "n_train_chars": int(len(train_ids)),
          "n_val_chars": int(len(val_ids)),
          "n_select_train_chars": int(len(sel_train)),
          "n_select_val_chars": int(len(sel_val)),
          "data": "CPython pydoc_data.topics (sorted keys, concatenated): "
                  "first 90% train, last 10% validation (reported); step "
                  "sizes chosen on the last 20% of the training text",
          "tuning_rule": _common.TUNING_RULE,
          "verdict_rule": _common.VERDICT_RULE,
          "diverged_counts_as": DIVERGED, "quick": quick,
          "machine": _common.machine_info(),
      },
      "tuning": {}, "runs": {},
  }
  t_start = time.perf_counter()
  i25 = round(0.25 * steps / eval_every)
  with tqdm(total=len(lengths) * len(names), desc="bng_lstm",
            disable=args.quiet) as bar:
    for length in lengths:
      sel_windows = eval_windows(sel_val, length, val_chars)
      val_windows = eval_windows(val_ids, length, val_chars)
      tuning = result["tuning"][str(length)] = {}
      runs = result["runs"][str(length)] = {}
      for name in names:
        bar.set_postfix_str(f"L={length} {name}")
        run = make_lm_run(
            FACTORIES[name], vocab_size=len(vocab), embed=embed,
            hidden=hidden, length=length, batch=chars_per_update // length,
            steps=steps, eval_every=eval_every, chunk=chunk,
            compiler_options=_common.QUICK_COMPILER_OPTIONS if quick else None)
        seconds = []

        def evaluate(lrs, seeds, run=run, seconds=seconds, sel_windows=sel_windows):
          out = run(seeds, lrs, train_ids, len(sel_train), sel_windows)
          seconds.append(out["seconds"])
          return out["val_loss"][..., -1]

        rec = _common.tune_lr(evaluate, _common.log_grid(CENTRES[name]),
                              seeds=select_seeds, max_widen=max_widen)
        final = run(final_seeds, [rec["chosen"]], train_ids, len(train_ids),
                    val_windows)
        tuning[name] = {**rec, "final_seeds": final_seeds,
                        "seconds": sum(seconds)}
        val = final["val_loss"][0]
        runs[name] = {
            "lr": rec["chosen"], "seeds": final_seeds,
            "val_loss": _clean(val),
            "train_loss": _clean(final["train_loss"][0]),
            "final_val_loss": _clean(val[:, -1]),
            "val_loss_25": _clean(val[:, i25]),
            "seconds": final["seconds"],
        }
        bar.write(f"L={length} {name}: lr {rec['chosen']:.4g} of {rec['grid']}"
                  f" (interior {rec['interior']}), final val "
                  f"{_clean(val[:, -1])}, 25% {_clean(val[:, i25])}, "
                  f"{time.perf_counter() - t_start:.0f}s")
        bar.update()
  result["config"]["wall_seconds"] = time.perf_counter() - t_start
  compute_claims(result)
  _common.write_results(out, "bng_lstm", result, markdown(result),
                        {"bng_lstm.png": plot})
  for c in result["claims"]:
    print(f"[{c['group']}] {c['claim']} ({c['when']}): "
          f"{_common.format_ci(c, digits=3)} -> {c['verdict']}")
  return result


if __name__ == "__main__":
  main()

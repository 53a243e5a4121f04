"""BNG Fig. 3 in small: a 2-layer LSTM character language model.

Yu et al. (2017), "Block-Normalized Gradient Method", Fig. 3, train a
character-level LSTM with truncated back-propagation through time (BPTT) of
two lengths and compare each optimizer with its block-normalized ("NG") form:
Adam vs AdamNG, AdaGrad vs AdaGradNG, SGD-momentum vs SGDM-NG. The paper's
claims: NG speeds up training, more so for the long BPTT length, and the
adaptive methods (Adam) do best on recurrent networks.

Here the text is CPython's ``pydoc_data.topics`` (real English, ~465k
characters, ~100 distinct characters): the first 90% trains, the last 10%
validates. The model is embedding -> LSTM -> LSTM -> softmax, written in plain
JAX with ``lax.scan`` over time; each LSTM layer is one block (one kernel on
``[x, h]`` plus its bias). Both BPTT lengths see the same number of characters
per update (``batch * length`` fixed), so a step costs about the same.
Step sizes are each base's usual default, shared by its NG form and held
constant: Adam 2e-3 (char-rnn's default), AdaGrad 0.1, SGDM 0.1 with
momentum 0.9. No gradient clipping anywhere. Validation loss (nats per
character) is measured on fixed validation windows of the run's own length,
each started from a zero state.

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

LRS = {"Adam": 2e-3, "AdaGrad": 0.1, "SGDM": 0.1}
MOMENTUM = 0.9


def make_optimizers() -> dict[str, optax.GradientTransformation]:
  return {
      "Adam": optax.adam(LRS["Adam"]),
      "AdamNG": normopt.adam_ng(LRS["Adam"]),
      "AdaGrad": optax.adagrad(LRS["AdaGrad"]),
      "AdaGradNG": normopt.adagrad_ng(LRS["AdaGrad"]),
      "SGDM": optax.sgd(LRS["SGDM"], momentum=MOMENTUM),
      "SGDM-NG": normopt.sgd_ng(LRS["SGDM"], momentum=MOMENTUM),
  }


def load_text(val_fraction=0.1):
  from pydoc_data import topics

  text = "".join(topics.topics[k] for k in sorted(topics.topics))
  vocab = sorted(set(text))
  index = {c: i for i, c in enumerate(vocab)}
  ids = np.fromiter((index[c] for c in text), np.int32, len(text))
  split = int(len(ids) * (1 - val_fraction))
  return ids[:split], ids[split:], vocab


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


def make_train_chunk(tx, train_ids, length, batch, steps):
  """A jitted function that runs ``steps`` updates on random windows."""
  data = jnp.asarray(train_ids)
  max_start = data.shape[0] - length - 1
  offsets = jnp.arange(length + 1)

  @jax.jit
  def chunk(params, opt_state, key):
    def step(carry, key):
      params, opt_state = carry
      starts = jax.random.randint(key, (batch,), 0, max_start)
      seq = data[starts[:, None] + offsets]
      loss, grads = jax.value_and_grad(loss_fn)(params, seq)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    key, sub = jax.random.split(key)
    (params, opt_state), losses = jax.lax.scan(
        step, (params, opt_state), jax.random.split(sub, steps))
    return params, opt_state, key, jnp.mean(losses)

  return chunk


def make_eval(val_ids, length, val_chars):
  n = min(val_chars // length, (len(val_ids) - 1) // length)
  starts = np.arange(n) * length
  seqs = jnp.asarray(val_ids[starts[:, None] + np.arange(length + 1)])
  return jax.jit(lambda params: loss_fn(params, seqs))


def _finite_or_none(x):
  x = float(x)
  return x if math.isfinite(x) else None


CLAIMS = [
    ("AdamNG reaches a lower validation loss than Adam", "AdamNG", "Adam"),
    ("AdaGradNG reaches a lower validation loss than AdaGrad",
     "AdaGradNG", "AdaGrad"),
    ("SGDM-NG reaches a lower validation loss than SGDM", "SGDM-NG", "SGDM"),
    ("on RNNs AdamNG beats SGDM-NG", "AdamNG", "SGDM-NG"),
]


def _val_at(r, frac):
  """Validation loss after ``frac`` of the updates (inf if diverged)."""
  v = r["val_loss"][round(frac * (len(r["val_loss"]) - 1))]
  return math.inf if v is None else v


def compute_claims(result):
  """Fills ``result["claims"]`` and ``result["length_claims"]``."""
  noise = result["config"]["noise"]
  runs = result["runs"]
  methods = set(next(iter(runs.values())))
  result["claims"] = []
  for claim, a, b in CLAIMS:
    if a not in methods or b not in methods:
      continue
    for when, frac in (("final", 1.0), ("after 25% of updates", 0.25)):
      diffs = {l: _val_at(r[a], frac) - _val_at(r[b], frac)
               for l, r in runs.items()}
      diffs = {l: d if math.isfinite(d) else math.copysign(1e9, d)
               for l, d in diffs.items()}
      result["claims"].append(
          {"claim": claim, "when": when, "better": a, "worse": b,
           "diff": diffs,
           "verdict": {l: _common.verdict(d, noise) for l, d in diffs.items()}})
  # The paper: NG helps more when the BPTT length (and so the risk of
  # exploding gradients) is larger.
  result["length_claims"] = []
  lengths = sorted(runs, key=int)
  short, long_ = lengths[0], lengths[-1]
  for ng, base in (("AdamNG", "Adam"), ("AdaGradNG", "AdaGrad"),
                   ("SGDM-NG", "SGDM")):
    if len(lengths) < 2 or ng not in methods or base not in methods:
      continue
    gain = {l: _val_at(runs[l][ng], 1.0) - _val_at(runs[l][base], 1.0)
            for l in (short, long_)}
    d = gain[long_] - gain[short]
    d = d if math.isfinite(d) else math.copysign(1e9, d)
    result["length_claims"].append(
        {"claim": f"{ng}'s gain over {base} is larger at BPTT {long_} "
                  f"than at {short}", "gain": gain, "diff": d,
         "verdict": _common.verdict(d, noise)})


def plot(result):
  import matplotlib.pyplot as plt

  lengths = list(result["runs"])
  fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4.5),
                           squeeze=False)
  colors = {"Adam": "C0", "AdaGrad": "C1", "SGDM": "C2"}
  for ax, length in zip(axes[0], lengths):
    for name, r in result["runs"][length].items():
      base = name.replace("NG", "").rstrip("-")
      vals = [np.nan if v is None else v for v in r["val_loss"]]
      ax.plot(r["steps"], vals, color=colors[base],
              ls="-" if "NG" in name else "--", label=name)
    ax.set_title(f"BPTT length {length}")
    ax.set_xlabel("update")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(top=min(4.7, ax.get_ylim()[1]))
    ax.legend()
  fig.suptitle("BNG Fig. 3 in small: 2-layer LSTM char LM on pydoc topics "
               "(solid: NG, dashed: plain)")
  return fig


def markdown(result):
  lengths = list(result["runs"])
  cfg = result["config"]
  lines = [
      "# BNG Fig. 3 in small: 2-layer LSTM character LM",
      "",
      f"hidden {cfg['hidden']}, embedding {cfg['embed']}, {cfg['steps']} "
      f"updates of {cfg['chars_per_update']} characters, constant step "
      f"sizes {cfg['lrs']} (NG forms share their base's), seed "
      f"{cfg['seed']}. Validation loss in nats/char "
      f"(uniform guess: {math.log(cfg['vocab_size']):.2f}).",
      "",
      "| method | " + " | ".join(
          f"BPTT {l}: final val loss | BPTT {l}: seconds" for l in lengths)
      + " |",
      "|---|" + "---|---|" * len(lengths),
  ]
  for name in next(iter(result["runs"].values())):
    cells = []
    for l in lengths:
      r = result["runs"][l][name]
      v = r["final_val_loss"]
      cells += ["diverged" if v is None else f"{v:.3f}", f"{r['seconds']:.0f}"]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "| claim | when | " + " | ".join(
      f"BPTT {l}" for l in lengths) + " |", "|---|---|" + "---|" * len(lengths)]
  for c in result["claims"]:
    cells = [f"{c['diff'][l]:+.3f} ({c['verdict'][l]})" for l in lengths]
    lines.append(f"| {c['claim']} | {c['when']} | " + " | ".join(cells) + " |")
  lines += ["", "Cells: validation loss of the first method minus the "
            "second (negative: the claim holds)."]
  if result.get("length_claims"):
    lines += ["", "| claim | NG minus plain, short / long BPTT | "
              "difference | verdict |", "|---|---|---|---|"]
    for c in result["length_claims"]:
      g = " / ".join(f"{v:+.3f}" for v in c["gain"].values())
      lines.append(f"| {c['claim']} | {g} | {c['diff']:+.3f} | "
                   f"{c['verdict']} |")
  lines += ["", f"One seed; differences below {cfg['noise']} nats are "
            "called within noise."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = _common.make_parser(
      __doc__, "tiny model, one BPTT length, two optimizers (seconds)")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--lengths", type=int, nargs="*", default=None)
  parser.add_argument("--methods", nargs="*", default=None)
  args = parser.parse_args(argv)
  out = _common.output_dir(
      parser, args, "bng_lstm",
      partial=bool(args.steps or args.lengths or args.methods))

  quick = args.quick
  lengths = args.lengths or ([16] if quick else [40, 400])
  chars_per_update = 320 if quick else 1600
  hidden, embed = (16, 8) if quick else (64, 16)
  steps = args.steps or (40 if quick else 1000)
  eval_every = 20 if quick else 50
  val_chars = 2000 if quick else 20000
  seed, noise = 0, 0.02

  train_ids, val_ids, vocab = load_text()
  txs = make_optimizers()
  names = args.methods or (["Adam", "AdamNG"] if quick else list(txs))
  txs = {k: txs[k] for k in names}

  result = {
      "config": {
          "lengths": lengths, "chars_per_update": chars_per_update,
          "batch": {str(l): chars_per_update // l for l in lengths},
          "hidden": hidden, "embed": embed, "steps": steps,
          "eval_every": eval_every, "val_chars": val_chars, "seed": seed,
          "lrs": LRS, "momentum": MOMENTUM, "vocab_size": len(vocab),
          "n_train_chars": int(len(train_ids)),
          "n_val_chars": int(len(val_ids)), "noise": noise, "quick": quick,
          "machine": _common.machine_info(),
      },
      "runs": {},
  }
  n_chunks = steps // eval_every
  params0 = init_params(jax.random.PRNGKey(seed), len(vocab), embed, hidden)
  with tqdm(total=len(lengths) * len(txs) * n_chunks, desc="bng_lstm",
            disable=args.quiet) as bar:
    for length in lengths:
      batch = chars_per_update // length
      evaluate = make_eval(val_ids, length, val_chars)
      runs = result["runs"][str(length)] = {}
      for name, tx in txs.items():
        bar.set_postfix_str(f"L={length} {name}")
        chunk = make_train_chunk(tx, train_ids, length, batch, eval_every)
        t0 = time.perf_counter()
        params, opt_state = params0, tx.init(params0)
        key = jax.random.PRNGKey(seed + 1)  # same windows for every method
        steps_done, val, train = [0], [float(evaluate(params))], []
        for _ in range(n_chunks):
          params, opt_state, key, tl = chunk(params, opt_state, key)
          steps_done.append(steps_done[-1] + eval_every)
          val.append(float(evaluate(params)))
          train.append(float(tl))
          bar.update()
        runs[name] = {
            "steps": steps_done,
            "val_loss": [_finite_or_none(v) for v in val],
            "train_loss": [_finite_or_none(v) for v in train],
            "final_val_loss": _finite_or_none(val[-1]),
            "best_val_loss": _finite_or_none(np.nanmin(val)),
            "seconds": time.perf_counter() - t0,
        }

  compute_claims(result)
  _common.write_results(out, "bng_lstm", result, markdown(result),
                        {"bng_lstm.png": plot})
  for c in result["claims"]:
    print(c["claim"], f"({c['when']})",
          {l: f"{c['diff'][l]:+.3f} {c['verdict'][l]}" for l in c["diff"]})
  for c in result["length_claims"]:
    print(c["claim"], f"{c['diff']:+.3f} {c['verdict']}")
  return result


if __name__ == "__main__":
  main()

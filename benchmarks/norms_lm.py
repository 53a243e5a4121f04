"""Norms on a transformer with Flax's own attention: Muon under three
layouts (the shape rule, the layer view, per head), optax's Muon, the Muon
family (NorMuon, AdaMuon, Moonlight's RMS-matched Muon), Scion with roles,
and Adam and AdamW.

Issue 18 asked whether the normalized step pays on a transformer once the
norm is the right one; issue 28 asks which matrix a spectral optimizer should
see in a real attention layer. This script's model is a scanned character LM
(:class:`CharLM`, on CPython's ``pydoc_data.topics``, with scanned_lm's data
and helpers): pre-LayerNorm blocks of Flax's ``nn.MultiHeadDotProductAttention``
(causal mask; q/k/v kernels ``(d, heads, head_dim)``, out ``(heads,
head_dim, d)``) and a GELU MLP 4x, ``nn.scan``-ned under ``"layers"``;
positions an ``nn.Embed`` looked up on ``arange(t)``; an ``nn.Dense`` head
``"head"``. Shrunk for every optimizer alike (:data:`FULL`), it compares,
each at its own tuned step size (``_common.TUNING_RULE``):

  * ``adam``: ``optax.adam(lr)``;
  * ``adamw``: ``optax.adamw(lr, weight_decay=WD)``, :data:`WD` = 0.1
    (Moonlight's), decayed on every leaf (optax's default mask): the
    Adam-family baseline of the Muon-family claims (issue 29);
  * ``muon (shape rule)``: ``normopt.muon(lr, layout=shape_rule_layout)``,
    the matrices of the last release's shape rule: every non-stacked axis but
    the last is the fan-in, the last the fan-out, so a q/k/v kernel ``(L, d,
    H, hd)`` is ``L`` matrices ``(d·H, hd)`` and the out kernel ``(L, H, hd,
    d)`` ``L`` matrices ``(H·hd, d)`` (:func:`shape_rule_layout`);
  * ``muon (layer)``: ``normopt.muon(lr, layout=param_layouts(model, x,
    head="head"))``: each layer's own map, q/k/v ``d → H·hd``, out ``H·hd →
    d``;
  * ``muon (per head)``: the same with ``attention="head"``: each head's
    q/k/v ``d → hd`` and out ``hd → d`` its own matrix;
  * ``muon (optax)``: ``optax.contrib.muon(lr, muon_weight_dimension_numbers=
    layouts.dimension_numbers(params))`` of the layer view: the reference;
  * ``normuon``: ``normopt.normuon(lr, layout=<the layer view>,
    adam_learning_rate=lr x ADAM_LR_RATIO)``: Muon (layer) with NorMuon's
    neuron-wise normalization after the orthogonalization (Li et al. 2025);
  * ``adamuon``: ``normopt.adamuon(lr, layout=<the layer view>,
    adam_learning_rate=lr)``: AdaMuon (Si et al. 2025), its update RMS
    ``rms=0.2`` (AdamW's), so its lr is AdamW-sized and the Adam leaves take
    the same lr;
  * ``muon (rms 0.2)``: ``normopt.muon(lr, layout=<the layer view>,
    consistent_rms=0.2, weight_decay=WD, adam_learning_rate=lr,
    adam_weight_decay=WD)``: Moonlight's recipe (Liu et al. 2025), one lr
    and one weight decay for every leaf, tuned;
  * ``muon (rms 0.2) @ adamw``: the same, untuned, at ``adamw``'s CHOSEN lr
    (and its WD): Moonlight's claim that RMS-matched Muon reuses AdamW's
    hyperparameters. Only its final seeds run; it needs ``adamw`` in the
    same run (``--methods`` with it but not ``adamw`` is refused);
  * ``scion (roles)``: ``normopt.scion(lr, layout=param_layouts(model, x,
    head="head"), radius=...)``, unconstrained (uSCG), its per-leaf norms
    picked by ``norms="auto"`` from the roles (hidden spectral, embeddings
    col, head sign, norms and biases bias_rms) at the reference's radii for
    GPT-style models (:data:`SCION_RADIUS_HIDDEN`, :data:`SCION_RADIUS_HEAD`).

Every Muon leaves the embeddings (tokens and positions), the head, the
LayerNorms and the biases to Adam (as modded-nanogpt does; the same split for
all of them) at ``lr x`` :data:`ADAM_LR_RATIO` (the four Muons and NorMuon,
whose lr is Muon-sized) or at ``lr`` itself (AdaMuon and the RMS-0.2 Muons,
whose lr is AdamW-sized): one tuned knob moves the whole network. The four
Muons differ only in the matrices of the attention kernels
(the MLP kernels are ``(L, d, 4d)`` / ``(L, 4d, d)`` in every view; the out
kernel is ``H·hd → d`` under the shape rule and the layer view alike).

The protocol: a log grid of step sizes about sqrt(10) apart, 2 selection
seeds trained on the training text minus its last 20% and scored on that
20% (the selection split); the grid widens while its best value is at an
edge; then 5 fresh seeds train on the whole training text at the chosen
step size and are scored on the held-out validation text (scanned_lm's last
10%, never seen in selection). Seed i gives every optimizer and every step
size the same initial weights and the same batches; every (step size, seed)
pair of one optimizer trains in ONE ``jit(vmap)`` with the step size traced.
Claims are judged by ``_common.VERDICT_RULE`` on the final held-out loss.

Run from the repository root::

  python benchmarks/norms_lm.py                          # full run
  python benchmarks/norms_lm.py --quick --out /tmp/nlm   # seconds
  python benchmarks/norms_lm.py --methods "scion (roles)" --out /tmp/part2
  python benchmarks/norms_lm.py --merge /tmp/part1 /tmp/part2

Parts of one run must share the config; the Muon family (issue 29) was added
after the first six methods ran, so a part without any of
:data:`NEW_METHODS` may lack the config keys that only they use
(:data:`_NEW_KEYS`) and the grid centres of methods it did not run (see
:func:`merge`).

Only a full run of every method (or a complete ``--merge``) writes
``benchmarks/results/norms_lm.{json,md,png}``.
"""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import _common
import normopt
import scanned_lm

STACK = scanned_lm.STACK

# Shrunk from scanned_lm.FULL (8 x 128, context 64, 1,500 steps) for every
# optimizer alike, so the whole protocol (about 100 training runs) fits in
# under an hour on a shared 2-core CPU.
FULL = dict(layers=4, d_model=48, heads=4, context=32, batch=16, steps=400,
            eval_every=50, eval_batches=8, grid_n=5, width=5, xla_options=None)
QUICK = dict(layers=2, d_model=16, heads=2, context=8, batch=4, steps=8,
             eval_every=4, eval_batches=1, grid_n=2, width=2,
             xla_options=_common.QUICK_CHEAP_COMPILE_OPTIONS)

METHODS = ("adam", "adamw", "muon (shape rule)", "muon (layer)",
           "muon (per head)", "muon (optax)", "normuon", "adamuon",
           "muon (rms 0.2)", "muon (rms 0.2) @ adamw", "scion (roles)")
# Issue 29's methods, added after the others ran (see merge()).
NEW_METHODS = ("adamw", "normuon", "adamuon", "muon (rms 0.2)",
               "muon (rms 0.2) @ adamw")
# Run untuned at another method's chosen lr (only the final seeds): name ->
# the method whose choice it takes, which must run earlier in the same run.
UNTUNED = {"muon (rms 0.2) @ adamw": "adamw"}
# A quick run compiles one program per method (most of its time): two keep
# it to seconds, with one claim (the layouts one); --methods adds the others.
QUICK_METHODS = ("muon (shape rule)", "muon (layer)")
# Grid centres: Adam's usual 1e-3..3e-3; Muon's 0.02 (Jordan et al.);
# Scion's lr at the reference's radii (its GPT example: 0.00036 at radius
# 50 for the hidden matrices, 3000 for the head). NorMuon keeps Muon's width
# scale (consistent_rms=None: its unit-RMS rows are rescaled to Muon's
# update size), so Muon's 0.02. AdaMuon's update has RMS rms=0.2 (AdamW's
# typical update RMS: its docstring's point is that AdamW's lr carries
# over), as has Muon with consistent_rms=0.2: both AdamW-sized, 2e-3 like
# AdamW's (Muon's √max(1, n/m) scale gives an update RMS of 1/√fan_in,
# 0.07-0.14 here, hence 0.02 for Muon; the 5-value grid spans 10x either
# side of its centre and widens at an edge).
GRID_CENTERS = {"adam": 2e-3, "adamw": 2e-3, "muon (shape rule)": 0.02,
                "muon (layer)": 0.02, "muon (per head)": 0.02,
                "muon (optax)": 0.02, "normuon": 0.02, "adamuon": 2e-3,
                "muon (rms 0.2)": 2e-3, "scion (roles)": 4e-4}
MUONS = ("muon (shape rule)", "muon (layer)", "muon (per head)",
         "muon (optax)")
# The Adam leaves of every Muon (embeddings, head, norms, biases) step at
# lr x this: 0.02 -> 2e-3, Adam's usual step size.
ADAM_LR_RATIO = 0.1
# Scion's radii: the reference's GPT example (hidden 50, head 50 x 60); every
# other leaf (embeddings, norms, biases) takes the hidden radius.
SCION_RADIUS_HIDDEN = 50.0
SCION_RADIUS_HEAD = 3000.0
SCION_MOMENTUM = 0.1
# Decoupled weight decay of AdamW and of the RMS-0.2 Muons (every leaf, the
# Muon leaves and the Adam leaves alike): Moonlight's 0.1 (Liu et al. 2025).
# Not tuned: the lr is, at this WD. NorMuon and AdaMuon run without decay,
# like the Muon they are compared with.
WD = 0.1
CONSISTENT_RMS = 0.2

PAPER_LAYER = ("issue 28: the shape rule orthogonalizes Flax's q/k/v kernels "
               "(d, H, hd) as (d·H, hd) matrices, not the layer's d → H·hd "
               "map; a layout read from the model gives the layer's own "
               "matrix (no published number)")
PAPER_HEAD = ("issue 28: recent large runs orthogonalize attention per head "
              "(each head's q/k/v d → hd, out hd → d); no published "
              "comparison with the layer view at this scale")
PAPER_MUON = ("Jordan et al. 2024: Muon trains transformers faster than "
              "AdamW (NanoGPT speedrun); qualitative, no number reproduced")
PAPER_SCION = ("Pethick et al. 2025: Scion (uSCG) trains nanoGPT to a lower "
               "validation loss than AdamW at the same budget; qualitative")
PAPER_NORMUON = ("Li et al. 2025 (NorMuon): +11% training efficiency over "
                 "Muon at 1.1B parameters; no number at this scale")
PAPER_ADAMUON = ("Si et al. 2025 (AdaMuon): consistently outperforms Muon "
                 "across model scales and learning rates (v1 abstract); "
                 "no number at this scale")
PAPER_RMS = ("Liu et al. 2025 (Moonlight): Muon with its update RMS matched "
             "to AdamW's (0.2) and weight decay beats AdamW; ~2x compute "
             "efficiency in their scaling-law runs")
PAPER_REUSE = ("Liu et al. 2025 (Moonlight): with RMS matching, Muon reuses "
               "AdamW's learning rate and weight decay without retuning "
               "and still beats it")
PAPER_ADAMW = ("context: Loshchilov and Hutter 2019 (decoupled weight decay); "
               "no claim at 400 steps, where decay has little time to act")
PAPER_EQUAL = ("issue 28: muon(layout=param_layouts(model, x)) equals "
               "optax.contrib.muon with layouts.dimension_numbers(params) to "
               "float32 roundoff per step (tests/test_layouts.py)")


# ----------------------------------------------------------------------------
# The model: Flax's own attention, blocks scanned under "layers".
# ----------------------------------------------------------------------------


class Block(nn.Module):
  """Pre-LN block: causal ``nn.MultiHeadDotProductAttention``, GELU MLP 4x."""
  d_model: int
  heads: int

  @nn.compact
  def __call__(self, x, _=None):
    mask = nn.make_causal_mask(jnp.ones(x.shape[:-1], jnp.int32))
    h = nn.LayerNorm(name="ln_attn")(x)
    x = x + nn.MultiHeadDotProductAttention(self.heads, name="attn")(
        h, mask=mask)
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = nn.gelu(nn.Dense(4 * self.d_model, name="mlp_in")(h))
    return x + nn.Dense(self.d_model, name="mlp_out")(h), None


class CharLM(nn.Module):
  """Token and position embeddings, ``layers`` scanned blocks, LayerNorm, head."""
  vocab: int
  layers: int
  d_model: int
  heads: int
  context: int

  @nn.compact
  def __call__(self, tokens):
    t = tokens.shape[-1]
    x = nn.Embed(self.vocab, self.d_model, name="embed")(tokens)
    # Positions: an embedding table looked up on 0..t-1 (a known layer).
    x = x + nn.Embed(self.context, self.d_model,
                     embedding_init=nn.initializers.normal(0.02),
                     name="pos")(jnp.arange(t))
    stack = nn.scan(Block, variable_axes={"params": 0},
                    split_rngs={"params": True}, length=self.layers)
    x, _ = stack(self.d_model, self.heads, name=STACK)(x, None)
    x = nn.LayerNorm(name="ln_out")(x)
    # Small head init: the first loss is ln(vocab), chance, for any width.
    return nn.Dense(self.vocab, kernel_init=nn.initializers.normal(0.02),
                    name="head")(x)


def make_model(cfg, vocab):
  return CharLM(vocab=vocab, layers=cfg["layers"], d_model=cfg["d_model"],
                heads=cfg["heads"], context=cfg["context"])


def example_tokens(cfg):
  return jnp.zeros((1, cfg["context"]), jnp.int32)


# ----------------------------------------------------------------------------
# Layouts and optimizers: name -> lr -> optax transformation (lr may be traced).
# ----------------------------------------------------------------------------


def model_layouts(model, cfg, attention="layer"):
  """``normopt.param_layouts`` of the benchmark's model (head: ``"head"``)."""
  return normopt.param_layouts(model, example_tokens(cfg), head="head",
                               attention=attention)


def _is_hidden(path, leaf):
  """A stacked kernel of the scanned blocks: ``layers/.../kernel``."""
  keys = [getattr(k, "key", None) for k in path]
  return keys[0] == STACK and keys[-1] == "kernel" and jnp.ndim(leaf) >= 3


def shape_rule_layout(path, leaf):
  """The last release's shape rule, as a ``layout=`` callable.

  A stacked kernel ``(L, *a, n)`` of the blocks: ``L`` matrices
  ``(∏a, n)`` (every non-stacked axis but the last the fan-in, the last the
  fan-out). Every other leaf (embeddings, head, norms, biases): ``None``, no
  matrix (Adam's, as in the other Muons).
  """
  if not _is_hidden(path, leaf):
    return None
  ndim = jnp.ndim(leaf)
  return normopt.ParamLayout("hidden", reduction=tuple(range(1, ndim - 1)),
                             output=(ndim - 1,), batch=(0,), stacked=1,
                             source="shape rule (last release)")


def scion_radius(params):
  """Per-leaf radius: the head kernel's and the rest's (the reference's GPT
  ratio)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: SCION_RADIUS_HEAD if getattr(p[0], "key", None) == "head"
      and getattr(p[-1], "key", None) == "kernel" else SCION_RADIUS_HIDDEN,
      params)


def make_optimizers(params_shape, model, cfg):
  """name -> ``lr -> optimizer`` for every method."""
  layer = model_layouts(model, cfg)
  per_head = model_layouts(model, cfg, attention="head")
  dims = layer.dimension_numbers(params_shape)
  radius = scion_radius(params_shape)

  def muon(layout):
    return lambda lr: normopt.muon(lr, layout=layout,
                                   adam_learning_rate=lr * ADAM_LR_RATIO)

  # Moonlight's recipe: one lr and one weight decay for every leaf (muon's
  # Adam leaves take adam_learning_rate and adam_weight_decay; its Muon
  # leaves learning_rate and weight_decay, decoupled: -lr (u + WD w), as
  # optax.adamw).
  def rms_muon(lr):
    return normopt.muon(lr, layout=layer, consistent_rms=CONSISTENT_RMS,
                        weight_decay=WD, adam_learning_rate=lr,
                        adam_weight_decay=WD)

  return {
      "adam": optax.adam,
      "adamw": lambda lr: optax.adamw(lr, weight_decay=WD),
      "muon (shape rule)": muon(shape_rule_layout),
      "muon (layer)": muon(layer),
      "muon (per head)": muon(per_head),
      "muon (optax)": lambda lr: optax.contrib.muon(
          lr, muon_weight_dimension_numbers=dims,
          adam_learning_rate=lr * ADAM_LR_RATIO),
      "normuon": lambda lr: normopt.normuon(
          lr, layout=layer, adam_learning_rate=lr * ADAM_LR_RATIO),
      # rms=0.2 (the default): AdamW-sized, so the Adam leaves at lr too.
      "adamuon": lambda lr: normopt.adamuon(lr, layout=layer,
                                            adam_learning_rate=lr),
      "muon (rms 0.2)": rms_muon,
      "muon (rms 0.2) @ adamw": rms_muon,
      "scion (roles)": lambda lr: normopt.scion(
          lr, SCION_MOMENTUM, layout=layer, radius=radius, constrained=False),
  }


def _matrices(pl, shape):
  b, m, n = pl.matrix_shape(shape)
  return f"{b} × {m} × {n}"


def layouts_record(model, cfg, params_shape):
  """The layouts of the benchmark's model: the printed tables (layer view and
  per head) and, per attention kernel, its matrices under each view."""
  layer = model_layouts(model, cfg)
  per_head = model_layouts(model, cfg, attention="head")
  flat = jax.tree_util.tree_flatten_with_path(params_shape)[0]
  views = {}
  for path, leaf in flat:
    name = "/".join(getattr(k, "key", str(k)) for k in path)
    if not (name.startswith(f"{STACK}/") and name.endswith("/kernel")):
      continue
    shape = tuple(leaf.shape)
    views[name] = {"shape": list(shape),
                   "shape rule": _matrices(shape_rule_layout(path, leaf), shape),
                   "layer": _matrices(layer(path, leaf), shape),
                   "per head": _matrices(per_head(path, leaf), shape)}
  return {"layer": str(layer), "per_head": str(per_head),
          "hidden_matrices": views}


# ----------------------------------------------------------------------------
# Training: every (lr, seed) pair of one optimizer in one jit(vmap).
# ----------------------------------------------------------------------------


class Splits(NamedTuple):
  """The whole text and where each phase trains and scores (character
  ranges ``[lo, hi)`` of ``ids``)."""
  ids: np.ndarray
  select_train: tuple[int, int]  # the training text minus its last 20%
  select_val: tuple[int, int]    # the last 20% of the training text
  train: tuple[int, int]         # the whole training text (final runs)
  held_out: tuple[int, int]      # scanned_lm's validation text (reported)


def load_splits():
  """:class:`Splits` of scanned_lm's text, and its vocabulary."""
  train_ids, val_ids, vocab = scanned_lm.load_text()
  n_tr, n_sel = len(train_ids), int(len(train_ids) * _common.VAL_FRACTION)
  ids = np.concatenate([train_ids, val_ids])
  return Splits(ids, (0, n_tr - n_sel), (n_tr - n_sel, n_tr), (0, n_tr),
                (n_tr, len(ids))), vocab


def _starts(rng, span, context, shape):
  """Window starts inside ``span``: every window's characters (with its
  target) lie in ``[lo, hi)``."""
  lo, hi = span
  return lo + scanned_lm.window_starts(rng, hi - lo, context, shape)


def make_run(model, make_tx, cfg, splits):
  """``run(seeds, lrs, phase) -> (lrs, seeds, evals + 1, 2)`` losses [train, scored].

  ``phase`` is ``"select"`` (train on the selection text, score the
  selection split) or ``"final"`` (train on the whole training text, score
  the held-out text). The losses are means over fixed windows (the same for
  every optimizer, seed and step size) of the text trained on and of the
  text scored, before training and every ``eval_every`` steps. Seed ``s``
  fixes the initial weights (``scanned_lm.init_params``) and the batch
  windows (``np.random.default_rng(s)``): runs are paired across step sizes
  and optimizers.

  One ``jit(vmap)`` over (step size, seed) pairs, the step size traced, of
  a fixed width ``cfg["width"]``: every call of every phase (the grid, a
  widening step, the final seeds) runs the SAME compiled program, in
  ``ceil(pairs / width)`` calls (the last one padded), so each optimizer
  compiles once.
  """
  context, batch, width = cfg["context"], cfg["batch"], cfg["width"]
  n_evals = cfg["steps"] // cfg["eval_every"]
  ids = jnp.asarray(splits.ids)
  rng = np.random.default_rng(10_000)
  shape = (cfg["eval_batches"], batch)
  windows = {
      "select": (splits.select_train, splits.select_val),
      "final": (splits.train, splits.held_out)}
  ev = {phase: tuple(jnp.asarray(_starts(rng, span, context, shape))
                     for span in spans) for phase, spans in windows.items()}

  def mean_loss(params, starts):
    def one(_, s):
      x, y = scanned_lm.gather(ids, s, context)
      return None, scanned_lm.loss_fn(model, params, x, y)
    return jax.lax.scan(one, None, starts)[1].mean()

  def one_run(params, starts, lr, ev_train, ev_scored):
    tx = make_tx(lr)
    evaluate = lambda p: jnp.stack([mean_loss(p, ev_train),
                                    mean_loss(p, ev_scored)])

    def step(carry, s):
      params, state = carry
      x, y = scanned_lm.gather(ids, s, context)
      grads = jax.grad(lambda p: scanned_lm.loss_fn(model, p, x, y))(params)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    def chunk(carry, starts_chunk):
      carry, _ = jax.lax.scan(step, carry, starts_chunk)
      return carry, evaluate(carry[0])

    _, curve = jax.lax.scan(chunk, (params, tx.init(params)), starts)
    return jnp.concatenate([evaluate(params)[None], curve])

  train = jax.jit(jax.vmap(one_run, in_axes=(0, 0, 0, None, None)),
                  compiler_options=cfg["xla_options"])
  init = jax.jit(lambda seed: scanned_lm.init_params(model, seed, cfg),
                 compiler_options=cfg["xla_options"])

  def run(seeds, lrs, phase):
    span = windows[phase][0]
    pairs = [(lr, s) for lr in lrs for s in seeds]
    n = len(pairs)
    pairs += [pairs[-1]] * (-n % width)  # pad the last call
    outs = []
    for i in range(0, len(pairs), width):
      part = pairs[i:i + width]
      params = [init(s) for _, s in part]
      starts = [_starts(np.random.default_rng(s), span, context,
                        (n_evals, cfg["eval_every"], batch)) for _, s in part]
      outs.append(np.asarray(train(
          jax.tree.map(lambda *a: jnp.stack(a), *params),
          jnp.asarray(np.stack(starts)),
          jnp.asarray([lr for lr, _ in part], jnp.float32), *ev[phase]),
          np.float64))
    out = np.concatenate(outs)[:n]
    return out.reshape((len(lrs), len(seeds)) + out.shape[1:])

  return run


def run_untuned(name, make_tx, model, cfg, splits, lr, source, quiet=False):
  """:func:`tune_and_run` of a method run at ``source``'s chosen ``lr``: no
  selection runs, only the final seeds; the record says where the lr is from."""
  run = make_run(model, make_tx, cfg, splits)
  t0 = time.perf_counter()
  final = run(list(_common.FINAL_SEEDS), [lr], "final")[0]
  if not quiet:
    print(f"  {name}: final at {source}'s {lr:g} (untuned),"
          f" {time.perf_counter() - t0:.0f} s: held-out"
          f" {final[:, -1, 1].mean():.4f}", flush=True)
  # No grid, so no "interior" (the scoreboard reads a missing one as "not
  # at an edge").
  record = {"grid": [], "val_loss": [], "mean_val_loss": [], "chosen": lr,
            "seeds": [], "widened": 0, "untuned": True,
            "lr_from": source, "final_seeds": list(_common.FINAL_SEEDS),
            "method": name}
  return record, {}, final


def tune_and_run(name, make_tx, model, cfg, splits, quiet=False):
  """The tuning record (+ selection curves) and the final-seed curves."""
  run = make_run(model, make_tx, cfg, splits)
  curves = {}

  def evaluate(lrs, seeds):
    t0 = time.perf_counter()
    out = run(seeds, lrs, "select")
    for lr, c in zip(lrs, out, strict=True):
      curves[float(lr)] = c
    if not quiet:
      print(f"  {name}: {len(lrs)} x {len(seeds)} selection runs,"
            f" {time.perf_counter() - t0:.0f} s: " + ", ".join(
                f"{lr:g} -> {np.mean(c[:, -1, 1]):.3f}"
                for lr, c in zip(lrs, out, strict=True)), flush=True)
    return out[:, :, -1, 1]

  record = _common.tune_lr(
      evaluate, _common.log_grid(GRID_CENTERS[name], cfg["grid_n"]))
  record["final_seeds"] = list(_common.FINAL_SEEDS)
  record["method"] = name
  t0 = time.perf_counter()
  final = run(list(_common.FINAL_SEEDS), [record["chosen"]], "final")[0]
  if not quiet:
    print(f"  {name}: final at {record['chosen']:g},"
          f" {time.perf_counter() - t0:.0f} s: held-out"
          f" {final[:, -1, 1].mean():.4f}", flush=True)
  selection = {f"{lr:g}": {"train_loss": curves[lr][:, :, 0].tolist(),
                           "val_loss": curves[lr][:, :, 1].tolist()}
               for lr in record["grid"]}
  return record, selection, final


# ----------------------------------------------------------------------------
# Claims
# ----------------------------------------------------------------------------

CLAIMS = (
    ("Muon with the model's layouts (layer view) beats Muon with the shape "
     "rule", "muon (layer)", "muon (shape rule)", PAPER_LAYER),
    ("Muon per head beats Muon's layer view", "muon (per head)",
     "muon (layer)", PAPER_HEAD),
    ("Muon (layer view) beats tuned Adam", "muon (layer)", "adam", PAPER_MUON),
    ("Scion with roles beats tuned Adam", "scion (roles)", "adam",
     PAPER_SCION),
    ("normopt's Muon (layer view) and optax's Muon are within noise of each "
     "other", "muon (layer)", "muon (optax)", PAPER_EQUAL),
    # Issue 29: the Muon family.
    ("NorMuon beats Muon (layer view)", "normuon", "muon (layer)",
     PAPER_NORMUON),
    ("AdaMuon beats Muon (layer view)", "adamuon", "muon (layer)",
     PAPER_ADAMUON),
    ("Muon with consistent RMS 0.2 and AdamW's weight decay beats tuned "
     "AdamW", "muon (rms 0.2)", "adamw", PAPER_RMS),
    ("Muon with consistent RMS 0.2 at AdamW's chosen lr and weight decay "
     "(untuned) beats tuned AdamW", "muon (rms 0.2) @ adamw", "adamw",
     PAPER_REUSE),
    ("AdamW (weight decay 0.1) beats Adam (context)", "adamw", "adam",
     PAPER_ADAMW),
)
EQUIVALENCE = CLAIMS[4][0]
assert CLAIMS[4][1:3] == ("muon (layer)", "muon (optax)")
METRIC = "final held-out validation loss (nats/char)"


def make_claims(final):
  """Every claim whose two methods ran; judged on the held-out loss, with
  the training-loss difference alongside."""
  out = []
  for text, a, b, paper in CLAIMS:
    if a not in final or b not in final:
      continue
    fa, fb = final[a], final[b]
    train = _common.claim(text, fa["train_loss"], fb["train_loss"])
    diffs = np.asarray(fa["val_loss"]) - np.asarray(fb["val_loss"])
    extra = dict(method_a=a, method_b=b, train_diff=train["diff"], train_ci=train["ci"],
                 max_abs_seed_diff=float(np.max(np.abs(diffs))))
    if text == EQUIVALENCE:
      extra["equivalence"] = ("an equivalence claim: it holds when the CI "
                              "contains 0 (verdict 'within noise'); 'holds' "
                              "or 'reversed' would refute it")
    out.append(_common.claim(text, fa["val_loss"], fb["val_loss"],
                             metric=METRIC, paper=paper, **extra))
  return out


# ----------------------------------------------------------------------------
# Run, merge, outputs
# ----------------------------------------------------------------------------


def _file_sha(path):
  import hashlib
  import pathlib
  p = pathlib.Path(normopt.__file__).parent / path
  return hashlib.sha256(p.read_bytes()).hexdigest()[:12] if p.exists() else None


def run(cfg, methods, quiet=False):
  t_wall, t_cpu, started = time.perf_counter(), time.process_time(), time.time()
  # Its "load at start" is read now, not when the payload is built at the end.
  machine = _common.machine_info()
  # The sources that decide the numbers, as they are when the run starts.
  for name, source in UNTUNED.items():
    if name in methods and source not in methods[:methods.index(name)]:
      raise ValueError(f"{name!r} runs at {source!r}'s chosen lr: run "
                       f"{source!r} before it, in the same run")
  sources = {f: sha for f in ("muon_recipe.py", "scion_lmo.py", "norms.py",
                              "normalization.py", "layouts.py",
                              "muon_family.py")
             if (sha := _file_sha(f))}
  splits, vocab = load_splits()
  model = make_model(cfg, len(vocab))
  shape = jax.eval_shape(lambda: scanned_lm.init_params(model, 0, cfg))
  opts = make_optimizers(shape, model, cfg)
  tuning, selection, results, final, seconds = {}, {}, {}, {}, {}
  for name in methods:
    t0 = time.perf_counter()
    if name in UNTUNED:
      source = UNTUNED[name]
      record, sel, curves = run_untuned(
          name, opts[name], model, cfg, splits, tuning[source]["chosen"],
          source, quiet)
    else:
      record, sel, curves = tune_and_run(name, opts[name], model, cfg, splits,
                                         quiet)
    seconds[name] = time.perf_counter() - t0
    tuning[name], selection[name] = record, sel
    results[name] = {"train_loss": curves[:, :, 0].tolist(),
                     "val_loss": curves[:, :, 1].tolist()}
    final[name] = {"train_loss": curves[:, -1, 0].tolist(),
                   "val_loss": curves[:, -1, 1].tolist()}
  import flax
  n_params = sum(x.size for x in jax.tree.leaves(shape))
  return {
      "benchmark": "norms_lm",
      "config": dict(
          cfg, methods=list(methods), grid_centers=dict(GRID_CENTERS),
          adam_lr_ratio=ADAM_LR_RATIO,
          muon_family=dict(
              weight_decay=WD, consistent_rms=CONSISTENT_RMS,
              untuned={k: f"run at {v}'s chosen lr (and weight decay), "
                       "final seeds only" for k, v in UNTUNED.items()},
              adamw=f"optax.adamw(lr, weight_decay={WD:g}) on every leaf",
              normuon="normopt.normuon(lr, layout=<layer view>, "
              "adam_learning_rate=lr x adam_lr_ratio); no weight decay",
              adamuon="normopt.adamuon(lr, layout=<layer view>, "
              "adam_learning_rate=lr) (rms 0.2, sign=True); no weight decay",
              rms_muon=f"normopt.muon(lr, layout=<layer view>, "
              f"consistent_rms={CONSISTENT_RMS:g}, weight_decay={WD:g}, "
              f"adam_learning_rate=lr, adam_weight_decay={WD:g})",
              split="the Muon-leaf/Adam-leaf split of muon_split for all, "
              "but AdaMuon and the RMS-0.2 Muons give the Adam leaves lr "
              "itself (their lr is AdamW-sized), not lr x adam_lr_ratio"),
          scion=dict(norms="auto from the layer-view roles: embeddings "
                     "(embed, pos) col; hidden kernels (layers/*/kernel) "
                     "spectral; head/kernel sign; norms and biases bias_rms",
                     radius_hidden=SCION_RADIUS_HIDDEN,
                     radius_head=SCION_RADIUS_HEAD, momentum=SCION_MOMENTUM,
                     constrained=False),
          muon_split="the hidden stacked kernels (layers/*/kernel) to Muon; "
          "embeddings (embed, pos), head, LayerNorms and biases to Adam at "
          "lr x adam_lr_ratio (every Muon)",
          layouts=layouts_record(model, cfg, shape),
          select_seeds=list(_common.SELECT_SEEDS),
          final_seeds=list(_common.FINAL_SEEDS),
          selection_metric="final loss on the selection split (last 20% of "
          "the training text)", metric=METRIC,
          tuning_rule=_common.TUNING_RULE, verdict_rule=_common.VERDICT_RULE,
          n_params=int(n_params), vocab=len(vocab),
          chars={k: span[1] - span[0] for k, span in
                 splits._asdict().items() if k != "ids"},
          data="pydoc_data.topics (CPython help texts) as in scanned_lm: "
          "last 10% of characters held out (reported); selection trains on "
          "the first 80% of the rest and scores the last 20%",
          model="norms_lm.CharLM: pre-LN char transformer, Flax's "
          "nn.MultiHeadDotProductAttention (causal mask) and a GELU MLP 4x per "
          f"block, blocks nn.scan-ned under '{STACK}'; positions an nn.Embed "
          "on arange(t); an nn.Dense head 'head'",
          machine=machine,
          versions=dict(jax=jax.__version__, optax=optax.__version__,
                        flax=flax.__version__)),
      "steps": list(range(0, cfg["steps"] + 1, cfg["eval_every"])),
      "tuning": tuning,
      "selection_curves": selection,
      "results": results,
      "final": final,
      "claims": make_claims(final),
      "method_seconds": seconds,
      "elapsed_s": time.perf_counter() - t_wall,
      "cpu_s": time.process_time() - t_cpu,
      "started": started, "ended": time.time(),
      "sources": sources,
  }


#: Config keys that may differ between parts of one run (see ``--merge``).
_PART_KEYS = ("methods", "machine")
#: Config keys that only :data:`NEW_METHODS` use: a part that ran none of
#: them may lack them (it ran before they existed); parts that have them
#: must agree.
_NEW_KEYS = ("muon_family",)


def _merge_config(parts):
  """The merged config: every key but the part keys equal in every part,
  except ``grid_centers`` (equal on the methods the parts share, each part's
  covering the methods it tuned; merged: the union) and :data:`_NEW_KEYS`
  (see there)."""
  loose = ("grid_centers",) + _NEW_KEYS
  _common.check_same_config(
      [dict(p, config={k: v for k, v in p["config"].items() if k not in loose})
       for p in parts], _PART_KEYS)
  centers = {}
  for p in parts:
    c = p["config"]["grid_centers"]
    missing = [m for m in p["config"]["methods"] if m not in UNTUNED and
               m not in c]
    if missing:
      raise ValueError(f"a part ran {missing} without their grid centres")
    for m, v in c.items():
      if centers.setdefault(m, v) != v:
        raise ValueError(f"parts of different configurations: grid_centers "
                         f"of {m!r}: {centers[m]} != {v}")
  config = dict(parts[0]["config"],
                grid_centers={m: centers[m] for m in METHODS if m in centers})
  for key in _NEW_KEYS:
    have = [p["config"][key] for p in parts if key in p["config"]]
    if any(h != have[0] for h in have):
      raise ValueError(f"parts of different configurations: ['{key}']")
    for p in parts:
      new = [m for m in p["config"]["methods"] if m in NEW_METHODS]
      if key not in p["config"] and new:
        raise ValueError(f"a part ran {new} without config[{key!r}]")
    if have:
      config[key] = have[0]
  return config


def merge(parts):
  """One result from parts of disjoint method subsets (same config, see
  :func:`_merge_config`); claims recomputed from the merged per-seed values.
  A method of :data:`UNTUNED` must be in the same part as the method whose
  lr it takes, at that method's chosen lr. Returns ``(result, complete)``."""
  out = dict(parts[0], config=_merge_config(parts))
  for key in ("tuning", "selection_curves", "results", "final",
              "method_seconds"):
    out[key] = {}
  methods = []
  for p in parts:
    for name in p["config"]["methods"]:
      if name in methods:
        raise ValueError(f"{name} is in two parts")
      methods.append(name)
      for key in ("tuning", "selection_curves", "results", "final",
                  "method_seconds"):
        out[key][name] = p[key][name]
    for name, source in UNTUNED.items():
      if name in p["config"]["methods"]:
        if source not in p["config"]["methods"]:
          raise ValueError(f"{name!r} must be in the same part as {source!r}")
        if p["tuning"][name]["chosen"] != p["tuning"][source]["chosen"]:
          raise ValueError(f"{name!r} did not run at {source!r}'s chosen lr")
        # A part written while untuned records still carried "interior":
        # None: no grid, no interior (see run_untuned).
        out["tuning"][name] = {k: v for k, v in p["tuning"][name].items()
                               if k != "interior"}
  methods = [m for m in METHODS if m in methods]
  for key in ("tuning", "selection_curves", "results", "final",
              "method_seconds"):
    out[key] = {m: out[key][m] for m in methods}
  out["config"]["methods"] = methods
  out["config"]["machine"] = " | ".join(p["config"]["machine"] for p in parts)
  out["claims"] = make_claims(out["final"])
  # Parts may run side by side or one after another: the wall time is the
  # length of the union of their [start, end] spans.
  spans = sorted((p["started"], p["ended"]) for p in parts)
  wall, (lo, hi) = 0.0, spans[0]
  for a, b in spans[1:]:
    if a > hi:
      wall, lo = wall + hi - lo, a
    hi = max(hi, b)
  out["started"] = spans[0][0]
  out["ended"] = max(b for _, b in spans)
  out["elapsed_s"] = wall + hi - lo
  out["cpu_s"] = sum(p["cpu_s"] for p in parts)
  out["merged_parts"] = len(parts)
  # Each part's own record: its methods, times, machine and the sources it
  # ran on (parts run at different times may differ there).
  out["parts"] = [dict(methods=p["config"]["methods"], started=p["started"],
                       ended=p["ended"], elapsed_s=p["elapsed_s"],
                       cpu_s=p["cpu_s"], machine=p["config"]["machine"],
                       sources=p.get("sources"))
                  for p in parts]
  out["sources"] = (parts[0].get("sources") if all(
      p.get("sources") == parts[0].get("sources") for p in parts)
      else "differ between parts: see parts[*].sources")
  out["quick"] = any(p.get("quick") for p in parts)
  return out, methods == list(METHODS) and not out["quick"]


def _ms(values, digits=3):
  m, s = _common.mean_std(values)
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown(payload):
  cfg = payload["config"]
  lines = [
      "Character LM on pydoc topics, pre-LN blocks of Flax's own"
      " `nn.MultiHeadDotProductAttention` (causal) and a GELU MLP 4x:"
      f" {cfg['layers']} scanned blocks, d_model {cfg['d_model']},"
      f" {cfg['heads']} heads, context {cfg['context']}, batch {cfg['batch']},"
      f" {cfg['steps']} steps, {cfg['n_params']:,} parameters; constant step"
      " sizes. Loss in nats per character on fixed windows; reported: the"
      f" held-out text, {len(cfg['final_seeds'])} fresh seeds, mean ± std.",
      "",
      "| optimizer | chosen lr | grid | interior | final train loss |"
      " final held-out loss |",
      "|---|---:|---|:-:|---:|---:|",
  ]
  for name, f in payload["final"].items():
    rec = payload["tuning"][name]
    if rec.get("untuned"):
      grid, interior = f"{rec['lr_from']}'s chosen lr, untuned", "—"
    else:
      grid = (f"{rec['grid'][0]:g} … {rec['grid'][-1]:g}"
              f" ({len(rec['grid'])})")
      interior = "yes" if rec["interior"] else "no"
    lines.append(
        f"| {name} | {rec['chosen']:g} | {grid} | {interior} |"
        f" {_ms(f['train_loss'])} | {_ms(f['val_loss'])} |")
  lines += ["", "Mean final selection loss over the selection seeds"
            " (∞: diverged), per grid value:", ""]
  for name, rec in payload["tuning"].items():
    if rec.get("untuned"):
      lines.append(f"- {name}: not tuned (final seeds only, at"
                   f" {rec['lr_from']}'s chosen lr {rec['chosen']:g})")
      continue
    vals = ", ".join(f"{lr:g}: {'∞' if v is None else f'{v:.4f}'}"
                     for lr, v in zip(rec["grid"], rec["mean_val_loss"],
                                      strict=True))
    lines.append(f"- {name}: {vals}")
  if payload["claims"]:
    lines += ["", "| claim | held-out A − B [95% CI] | train A − B [95% CI] |"
              " max per-seed \\|A − B\\| | verdict |", "|---|---:|---:|---:|---|"]
  for c in payload["claims"]:
    train = _common.format_ci(dict(diff=c["train_diff"], ci=c["train_ci"]),
                              digits=4)
    lines.append(f"| {c['claim']} | {_common.format_ci(c, digits=4)} |"
                 f" {train} | {c['max_abs_seed_diff']:.4f} | {c['verdict']} |")
  if any(c["claim"] == EQUIVALENCE for c in payload["claims"]):
    lines += ["", "The Muon-vs-Muon row is an equivalence claim: it holds"
              " when its CI contains 0 (verdict \"within noise\"); \"holds\""
              " or \"reversed\" there would mean the two Muons differ. A CI"
              " containing 0 does not prove equality: its width and the"
              " largest per-seed difference bound how far apart they can be"
              " here."]
  lines += layouts_markdown(cfg)
  s = cfg["scion"]
  lines += [
      "", f"Muons: {cfg['muon_split']}; adam_lr_ratio"
      f" {cfg['adam_lr_ratio']:g}. Scion"
      f" (uSCG, momentum {s['momentum']}): {s['norms']}; radius"
      f" {s['radius_hidden']:g}, head {s['radius_head']:g}.",
  ]
  fam = cfg.get("muon_family")
  if fam:
    lines += [
        "", f"Muon family and AdamW (issue 29): adamw {fam['adamw']};"
        f" normuon {fam['normuon']}; adamuon {fam['adamuon']};"
        f" muon (rms 0.2) {fam['rms_muon']}; "
        + "; ".join(f"{k}: {v}" for k, v in fam["untuned"].items())
        + f". Split: {fam['split']}. Weight decay {fam['weight_decay']:g}"
        " (Moonlight's), not tuned."]
  lines += [
      "", f"Tuning: {cfg['tuning_rule']} Here the \"training set\" is the"
      " training text and the \"test set\" the held-out text.",
      "", f"Verdicts: {cfg['verdict_rule']}",
      "", f"Time: {payload['elapsed_s']:.0f} s wall, {payload['cpu_s']:.0f} s"
      " CPU (all threads) for the whole run; per method (tuning + final): "
      + ", ".join(f"{k} {v:.0f} s" for k, v in
                  payload["method_seconds"].items())
      + (f"; {payload['merged_parts']} parts, merged: wall the union of the"
         " parts' spans, CPU summed; per-method times overlap when parts ran"
         " side by side" if payload.get("merged_parts") else "")
      + "."]
  for i, part in enumerate(payload.get("parts") or []):
    import datetime
    when = datetime.datetime.fromtimestamp(part["started"], datetime.UTC)
    lines += ["", f"Part {i + 1} ({when:%Y-%m-%d %H:%M} UTC,"
              f" {part['elapsed_s']:.0f} s wall, {part['cpu_s']:.0f} s CPU;"
              f" {part['machine']}): " + ", ".join(part["methods"])
              + "; sources " + ", ".join(
                  f"{k} {v}" for k, v in (part["sources"] or {}).items())
              + "."]
  return "\n".join(lines) + "\n"


def layouts_markdown(cfg):
  """The layouts table of the benchmark's model and the hidden kernels'
  matrices under the three views."""
  lay = cfg.get("layouts")
  if not lay:
    return []
  lines = ["", "Layouts of the benchmark's model,"
           " `str(normopt.param_layouts(model, x, head=\"head\"))` (the"
           " layer view; `muon (layer)`, `muon (optax)` and `scion (roles)`"
           " use it):", "", "```", lay["layer"], "```", "",
           "The hidden kernels' matrices (B × fan_in × fan_out) under each"
           " Muon's layout (per head: `attention=\"head\"`, heads a batch"
           " axis):", "",
           "| kernel | shape | shape rule | layer | per head |",
           "|---|---|---|---|---|"]
  for name, v in lay["hidden_matrices"].items():
    lines.append(f"| {name} | {tuple(v['shape'])} | {v['shape rule']} |"
                 f" {v['layer']} | {v['per head']} |")
  return lines


def page(payload):
  return ("# Norms on a scanned char LM with Flax's attention\n\n"
          + markdown(payload))


def plot(payload):
  import matplotlib.pyplot as plt

  steps = np.asarray(payload["steps"])
  # Two panels and a third, empty, for the one legend (eleven methods would
  # hide the curves; tight_layout ignores a figure legend).
  fig, (*axes, legend_ax) = plt.subplots(1, 3, figsize=(15, 4.8),
                                   width_ratios=(1, 1, 0.42))
  lo = np.inf
  colors = list(plt.get_cmap("tab10").colors) + ["black"]
  for i, (name, r) in enumerate(payload["results"].items()):
    lr = payload["tuning"][name]["chosen"]
    ls = ("--" if name == "muon (optax)" else
          ":" if name in UNTUNED else "-")
    for ax, key in zip(axes, ("val_loss", "train_loss"), strict=True):
      mean = np.asarray(r[key]).mean(0)
      ax.plot(steps, mean, label=f"{name} (lr {lr:g})", ls=ls,
              color=colors[i % len(colors)])
      lo = min(lo, mean.min())
  for ax, what in zip(axes, ("held-out validation loss", "training loss"),
                      strict=True):
    ax.set_xlabel("step")
    ax.set_ylabel("nats / char")
    ax.set_title(f"{what}, mean over {len(_common.FINAL_SEEDS)} seeds")
    ax.set_ylim(lo - 0.1, lo + 1.2)
  legend_ax.axis("off")
  legend_ax.legend(*axes[0].get_legend_handles_labels(), loc="center left",
             fontsize=8)
  cfg = payload["config"]
  fig.suptitle(f"Char LM, Flax attention ({cfg['layers']} scanned blocks,"
               f" d {cfg['d_model']}): each optimizer at its tuned step size",
               fontsize=11)
  return fig


def main(argv=None):
  parser = _common.make_parser(
      __doc__, "tiny model, 2 grid values, a few steps (seconds)")
  parser.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                      metavar="NAME", help=f"a subset of {METHODS}")
  _common.add_merge_arg(parser, "norms_lm", "--methods")
  args = parser.parse_args(argv)
  figures = {"norms_lm.png": plot}
  if args.merge:
    return _common.run_merge(parser, args, "norms_lm", merge, page, figures)
  default = QUICK_METHODS if args.quick else METHODS
  methods = [m for m in METHODS if m in (args.methods or default)]
  for name, source in UNTUNED.items():
    if name in methods and source not in methods:
      parser.error(f"{name!r} runs at {source!r}'s chosen lr: add {source!r}"
                   " to --methods (the same part)")
  partial = methods != list(METHODS)
  out = _common.output_dir(parser, args, "norms_lm", partial)
  payload = run(dict(QUICK if args.quick else FULL), methods, args.quiet)
  payload["quick"] = args.quick
  _common.write_results(out, "norms_lm", payload, page(payload), figures)
  print(markdown(payload))
  return payload


if __name__ == "__main__":
  main()
  sys.exit(0)

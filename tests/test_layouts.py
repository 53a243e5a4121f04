"""Layouts (DESIGN §8): each parameter's matrix, fans and role from its model.

Expected layouts per layer type in Flax Linen, Flax NNX and Equinox, stacked
and not; Muon with a model's layouts equals optax's Muon given the
equivalent hand-written ``MuonDimensionNumbers`` (layer and per-head views);
an Equinox model under Muon and Scion equals the same model in Flax layout;
and every error and warning of the default rule.
"""

import warnings

import chex
import equinox as eqx
from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt

D, H, HD = 8, 2, 4


def _kinds(lay):
  return {"/".join(map(str, k)): (pl.kind, pl.reduction, pl.output, pl.batch)
          for k, pl in lay.items()}


def _sds(*shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


# ---------------------------------------------------------------- Flax Linen


class LinenZoo(nn.Module):
  """One of each Linen layer with a kernel or a scale."""

  @nn.compact
  def __call__(self, tokens, img, seq):
    e = nn.Embed(10, D, name="embed")
    x = e(tokens)
    x = nn.MultiHeadDotProductAttention(num_heads=H, qkv_features=H * HD, name="attn")(x)
    x = nn.LayerNorm(name="ln")(x)
    x = nn.RMSNorm(name="rms")(x)
    x = nn.DenseGeneral((3, 5), name="dg")(x)
    x = nn.DenseGeneral(D, axis=(-2, -1), name="dg_in")(x)
    x = nn.Dense(D, name="dense")(x)
    y = nn.Einsum((D, 3, 6), "btd,dhk->bthk", name="einsum")(x)
    c = nn.Conv(4, (3, 3), name="conv2d")(img)
    c = nn.GroupNorm(num_groups=2, name="gn")(c)
    c = nn.ConvTranspose(5, (2, 2), name="convT")(c)
    s = nn.Conv(6, (3,), name="conv1d")(seq)
    logits = e.attend(x)
    return logits, y, c, s


def _linen_inputs():
  return (_sds(2, 5, dtype=jnp.int32), _sds(2, 6, 6, 3), _sds(2, 7, 2))


def test_linen_layer_types():
  lay = normopt.param_layouts(LinenZoo(), *_linen_inputs())
  k = _kinds(lay)
  assert k["embed/embedding"] == ("embedding", (0,), (1,), ())
  assert lay["embed/embedding"].tied
  assert k["attn/query/kernel"] == ("hidden", (0,), (1, 2), ())
  assert k["attn/query/bias"] == ("bias", (), (0, 1), ())
  assert k["attn/out/kernel"] == ("hidden", (0, 1), (2,), ())
  assert k["ln/scale"][0] == k["ln/bias"][0] == k["rms/scale"][0] == "norm"
  assert k["dg/kernel"] == ("hidden", (0,), (1, 2), ())
  assert k["dg_in/kernel"] == ("hidden", (0, 1), (2,), ())
  assert k["dense/kernel"] == ("hidden", (0,), (1,), ())
  assert k["einsum/kernel"] == ("hidden", (0,), (1, 2), ())
  assert k["conv2d/kernel"] == ("conv", (0, 1, 2), (3,), ())
  assert lay["conv2d/kernel"].spatial == (0, 1)
  assert k["gn/scale"][0] == "norm"
  assert k["convT/kernel"] == ("conv", (0, 1, 2), (3,), ())
  assert k["conv1d/kernel"] == ("conv", (0, 1), (2,), ())
  assert lay["conv1d/kernel"].spatial == (0,)
  assert not lay.unknown()
  # The per-head view: heads a batch axis of q/k/v and out.
  head = normopt.param_layouts(LinenZoo(), *_linen_inputs(), attention="head")
  kh = _kinds(head)
  assert kh["attn/query/kernel"] == ("hidden", (0,), (2,), (1,))
  assert kh["attn/out/kernel"] == ("hidden", (1,), (2,), (0,))
  assert head["attn/key/kernel"].matrix_shape((D, H, HD)) == (H, D, HD)
  assert kh["dg/kernel"] == k["dg/kernel"]  # only attention modules split
  # The table names every leaf, its kind and its matrices.
  text = str(lay)
  assert "attn/query/kernel" in text and "1 × 8 × 8" in text and "flax.linen" in text


def test_linen_dense_general_batch_dims():
  class M(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.DenseGeneral(6, axis=-1, batch_dims=0, name="bd")(x)

  lay = normopt.param_layouts(M(), _sds(3, 4, 5))
  assert _kinds(lay)["bd/kernel"] == ("hidden", (1,), (2,), (0,))
  assert lay["bd/kernel"].matrix_shape((3, 5, 6)) == (3, 5, 6)


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, _=None):
    h = nn.LayerNorm(name="ln")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=H, name="attn")(h, h)
    h = nn.LayerNorm(name="ln2")(x)
    return x + nn.Dense(D, name="mlp_out")(nn.gelu(nn.Dense(4 * D, name="mlp_in")(h))), None


class LinenLM(nn.Module):
  layers: int = 3

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(11, D, name="embed")(tokens)
    x, _ = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True},
                   length=self.layers)(name="layers")(x, None)
    return nn.Dense(11, name="head")(x)


def test_linen_scan_and_vmap_stack_axes():
  lay = normopt.param_layouts(LinenLM(), _sds(2, 5, dtype=jnp.int32), head="head")
  q = lay["layers/attn/query/kernel"]
  assert (q.kind, q.batch, q.reduction, q.output, q.stacked) == ("hidden", (0,), (1,), (2, 3), 1)
  assert lay["layers/attn/query/bias"].batch == (0,)
  assert lay["layers/mlp_in/kernel"].matrix_shape((3, D, 4 * D)) == (3, D, 4 * D)
  assert lay["head/kernel"].kind == "head" and lay["head/bias"].kind == "bias"
  head = normopt.param_layouts(LinenLM(), _sds(2, 5, dtype=jnp.int32), attention="head")
  q = head["layers/attn/query/kernel"]
  assert (q.batch, q.reduction, q.output, q.stacked) == ((0, 2), (1,), (3,), 1)
  assert q.matrix_shape((3, D, H, D // H)) == (3 * H, D, D // H)

  class Ens(nn.Module):  # nn.vmap: an ensemble axis, not leading
    @nn.compact
    def __call__(self, x):
      return nn.vmap(nn.Dense, variable_axes={"params": 1}, split_rngs={"params": True},
                     in_axes=None, out_axes=0, axis_size=4)(6, name="ens")(x)

  ens = normopt.param_layouts(Ens(), _sds(2, 5))["ens/kernel"]
  assert (ens.batch, ens.reduction, ens.output, ens.stacked) == ((1,), (0,), (2,), 0)


# ---------------------------------------------------------------- Flax NNX


class NNXZoo(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(10, D, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=H, in_features=D, qkv_features=H * HD,
                                       decode=False, rngs=rngs)
    self.ln = nnx.LayerNorm(D, rngs=rngs)
    self.rms = nnx.RMSNorm(D, rngs=rngs)
    self.lin = nnx.Linear(D, 6, rngs=rngs)
    self.lg = nnx.LinearGeneral(D, (3, 5), rngs=rngs)
    self.ein = nnx.Einsum("btd,dhk->bthk", (D, 3, 6), rngs=rngs)
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.conv1d = nnx.Conv(2, 6, (3,), rngs=rngs)
    self.convT = nnx.ConvTranspose(4, 5, (2, 2), rngs=rngs)


def test_nnx_layer_types_and_vmap_stack():
  model = nnx.eval_shape(lambda: NNXZoo(nnx.Rngs(0)))
  lay = normopt.param_layouts(model)
  k = _kinds(lay)
  assert k["embed/embedding"] == ("embedding", (0,), (1,), ())
  assert k["attn/query/kernel"] == ("hidden", (0,), (1, 2), ())
  assert k["attn/query/bias"][0] == "bias"
  assert k["attn/out/kernel"] == ("hidden", (0, 1), (2,), ())
  assert k["ln/scale"][0] == k["rms/scale"][0] == "norm"
  assert k["lin/kernel"] == ("hidden", (0,), (1,), ())
  assert k["lg/kernel"] == ("hidden", (0,), (1, 2), ())
  assert k["ein/kernel"] == ("hidden", (0,), (1, 2), ())
  assert k["conv/kernel"] == ("conv", (0, 1, 2), (3,), ())
  assert k["conv1d/kernel"] == ("conv", (0, 1), (2,), ())
  assert k["convT/kernel"] == ("conv", (0, 1, 2), (3,), ())
  assert not lay.unknown()
  head = normopt.param_layouts(model, attention="head")
  assert _kinds(head)["attn/value/kernel"] == ("hidden", (0,), (2,), (1,))

  @nnx.vmap(in_axes=0, out_axes=0)
  def make(key):
    return NNXZoo(nnx.Rngs(key))

  stacked = normopt.param_layouts(make(jax.random.split(jax.random.key(0), 3)),
                                  attention="head")
  q = stacked["attn/query/kernel"]
  assert (q.batch, q.reduction, q.output, q.stacked) == ((0, 2), (1,), (3,), 1)
  assert stacked["conv/kernel"].batch == (0,) and stacked["conv/kernel"].spatial == (1, 2)
  assert stacked["ln/scale"].batch == (0,)


# ---------------------------------------------------------------- Equinox


class EqxZoo(eqx.Module):
  lin: eqx.nn.Linear
  conv: eqx.nn.Conv2d
  conv1d: eqx.nn.Conv1d
  convT: eqx.nn.ConvTranspose2d
  ln: eqx.nn.LayerNorm
  emb: eqx.nn.Embedding
  mha: eqx.nn.MultiheadAttention
  gru: eqx.nn.GRUCell

  def __init__(self, key):
    k = jax.random.split(key, 8)
    self.lin = eqx.nn.Linear(3, 4, key=k[0])
    self.conv = eqx.nn.Conv2d(3, 5, 3, key=k[1])
    self.conv1d = eqx.nn.Conv1d(2, 6, 3, key=k[2])
    self.convT = eqx.nn.ConvTranspose2d(3, 5, 2, key=k[3])
    self.ln = eqx.nn.LayerNorm(4)
    self.emb = eqx.nn.Embedding(10, 4, key=k[4])
    self.mha = eqx.nn.MultiheadAttention(2, 8, key=k[5])
    self.gru = eqx.nn.GRUCell(3, 4, key=k[6])


def test_equinox_layer_types_and_filter_vmap_stack():
  lay = normopt.param_layouts(EqxZoo(jax.random.key(0)))
  k = _kinds(lay)
  assert k["lin/weight"] == ("hidden", (1,), (0,), ())  # (out, in)
  assert k["lin/bias"][0] == "bias"
  assert k["conv/weight"] == ("conv", (1, 2, 3), (0,), ())  # (O, I, kh, kw)
  assert lay["conv/weight"].spatial == (2, 3)
  assert k["conv/bias"] == ("bias", (), (0, 1, 2), ())  # (O, 1, 1) is no matrix
  assert k["conv1d/weight"] == ("conv", (1, 2), (0,), ())
  assert k["convT/weight"] == ("conv", (1, 2, 3), (0,), ())
  assert k["ln/weight"][0] == "norm"
  assert k["emb/weight"] == ("embedding", (0,), (1,), ())
  assert k["mha/query_proj/weight"] == ("hidden", (1,), (0,), ())
  assert k["gru/weight_ih"] == ("hidden", (1,), (0,), ())
  assert not lay.unknown()
  lin = lay["lin/weight"]
  assert lin.fans((4, 3)) == (3, 4)

  stack = eqx.filter_vmap(lambda key: eqx.nn.Linear(3, 4, key=key))(
      jax.random.split(jax.random.key(0), 5))
  s = normopt.param_layouts(stack)
  assert _kinds(s)["weight"] == ("hidden", (2,), (1,), (0,)) and s["weight"].stacked == 1


# ---------------------------------------------------------------- Muon = optax's Muon


def _grads_like(params, rng):
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)


def _assert_muon_equals_optax(params, layout, dims, steps=3):
  rng = np.random.default_rng(0)
  kw = dict(beta=0.9, weight_decay=0.01)
  ref = optax.contrib.muon(0.02, muon_weight_dimension_numbers=dims, **kw)
  ours = normopt.muon(0.02, layout=layout, **kw)
  s_ref, s_ours = ref.init(params), ours.init(params)
  for _ in range(steps):
    g = _grads_like(params, rng)
    u_ref, s_ref = jax.jit(ref.update)(g, s_ref, params)
    u_ours, s_ours = jax.jit(ours.update)(g, s_ours, params)
    chex.assert_trees_all_close(u_ours, u_ref, rtol=1e-5, atol=1e-7)
    params = optax.apply_updates(params, u_ours)


def DN(reduction, output):  # noqa: N802  (optax's name; axes as tuples, as layouts give them)
  tup = lambda a: (a,) if isinstance(a, int) else tuple(a)
  return optax.contrib.MuonDimensionNumbers(tup(reduction), tup(output))


def _block_dims(view, stacked):
  """Hand-written MuonDimensionNumbers of a transformer block's leaves."""
  s = 1 if stacked else 0
  if view == "layer":
    qkv, out = DN(s, (s + 1, s + 2)), DN((s, s + 1), s + 2)
  else:
    qkv, out = DN(s, s + 2), DN(s + 1, s + 2)
  ln = {"bias": None, "scale": None}
  return {"attn": {n: {"kernel": qkv, "bias": None} for n in ("query", "key", "value")}
          | {"out": {"kernel": out, "bias": None}},
          "ln": ln, "ln2": ln,
          "mlp_in": {"kernel": DN(s, s + 1), "bias": None},
          "mlp_out": {"kernel": DN(s, s + 1), "bias": None}}


@pytest.mark.fast_cases("head")
@pytest.mark.parametrize("view", ["layer", "head"])
def test_muon_with_linen_layouts_equals_optax_muon(view):
  model = LinenLM()
  x = jnp.zeros((2, 5), jnp.int32)
  params = model.init(jax.random.key(0), x)["params"]
  lay = normopt.param_layouts(model, x, head="head", attention=view)
  dims = {"embed": {"embedding": None}, "head": {"kernel": None, "bias": None},
          "layers": _block_dims(view, stacked=True)}
  assert lay.dimension_numbers(params) == dims
  _assert_muon_equals_optax(params, lay, dims)


@pytest.mark.fast_cases("layer")
@pytest.mark.parametrize("view", ["layer", "head"])
def test_muon_with_nnx_layouts_equals_optax_muon(view):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.ln = nnx.LayerNorm(D, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(num_heads=H, in_features=D, decode=False, rngs=rngs)
      self.ln2 = nnx.LayerNorm(D, rngs=rngs)
      self.mlp_in = nnx.Linear(D, 4 * D, rngs=rngs)
      self.mlp_out = nnx.Linear(4 * D, D, rngs=rngs)

  model = Block(nnx.Rngs(0))
  params = jax.tree.map(lambda v: v, nnx.state(model, nnx.Param))
  lay = normopt.param_layouts(model, attention=view)
  dims = _block_dims(view, stacked=False)
  plain = jax.tree.map(jnp.asarray, nnx.to_pure_dict(params))
  assert lay.dimension_numbers(plain) == dims
  _assert_muon_equals_optax(plain, lay, dims)


# ---------------------------------------------------------------- Equinox = Flax layout


class EqxNet(eqx.Module):
  conv: eqx.nn.Conv2d
  fc1: eqx.nn.Linear
  fc2: eqx.nn.Linear

  def __init__(self, key):
    k1, k2, k3 = jax.random.split(key, 3)
    self.conv = eqx.nn.Conv2d(3, 4, 3, key=k1)
    self.fc1 = eqx.nn.Linear(16, 12, key=k2)
    self.fc2 = eqx.nn.Linear(12, 5, key=k3)


def _to_flax(p):
  """The same parameters in Flax layout: kernels (in, out), HWIO, biases (O,)."""
  return {"conv": {"kernel": jnp.transpose(p.conv.weight, (2, 3, 1, 0)),
                   "bias": p.conv.bias.reshape(-1)},
          "fc1": {"kernel": p.fc1.weight.T, "bias": p.fc1.bias},
          "fc2": {"kernel": p.fc2.weight.T, "bias": p.fc2.bias}}


@pytest.mark.fast_cases("scion")
@pytest.mark.parametrize("method", ["muon", "scion"])
def test_equinox_model_equals_flax_layout(method):
  model = EqxNet(jax.random.key(0))
  params = eqx.filter(model, eqx.is_array)
  lay = normopt.param_layouts(model)
  make = {"muon": lambda layout: normopt.muon(0.02, layout=layout),
          "scion": lambda layout: normopt.scion(0.02, layout=layout)}[method]
  tx_e, tx_f = make(lay), make(None)
  flax_params = _to_flax(params)
  s_e, s_f = tx_e.init(params), tx_f.init(flax_params)
  rng = np.random.default_rng(1)
  for _ in range(3):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    u_e, s_e = jax.jit(tx_e.update)(g, s_e, params)
    u_f, s_f = jax.jit(tx_f.update)(_to_flax(g), s_f, flax_params)
    chex.assert_trees_all_close(_to_flax(u_e), u_f, rtol=1e-5, atol=1e-7)
  # Without the model, the Flax shape rule reads Equinox's (out, in) kernel
  # inverted: a different (wrong) width scale, so a different update.
  u_wrong, _ = make(None).update(g, make(None).init(params), params)
  assert not np.allclose(np.asarray(u_wrong.fc1.weight), np.asarray(u_e.fc1.weight))


# ---------------------------------------------------------------- the default rule


def test_layouts_from_shapes_rule():
  p = {"a": {"bias": jnp.zeros((2, 4)), "scale": jnp.zeros(4), "embedding": jnp.zeros((9, 4))},
       "dense": jnp.zeros((4, 3)), "attn": jnp.zeros((4, 2, 3)), "conv": jnp.zeros((3, 3, 2, 4)),
       "vec": jnp.zeros(3), "layers": {"kernel": jnp.zeros((5, 4, 4))}}
  lay = normopt.layouts_from_shapes(p, stacked=normopt.stacked_under("layers"))
  k = _kinds(lay)
  assert k["a/bias"][0] == "bias" and k["a/scale"][0] == "norm"
  assert k["a/embedding"] == ("embedding", (0,), (1,), ())
  assert k["dense"] == ("hidden", (0,), (1,), ())
  assert k["attn"][0] == "unknown"
  assert k["conv"] == ("conv", (0, 1, 2), (3,), ())
  assert k["vec"][0] == "bias"
  assert k["layers/kernel"] == ("hidden", (1,), (2,), (0,))
  torch = _kinds(normopt.layouts_from_shapes(p, convention="torch"))
  assert torch["dense"] == ("hidden", (1,), (0,), ())
  assert torch["conv"] == ("conv", (1, 2, 3), (0,), ())
  assert lay.unknown() == ["attn"]


def test_spectral_unknown_leaf_raises_naming_it_and_both_fixes():
  rng = np.random.default_rng(2)
  g = {"attn": {"query": {"kernel": jnp.asarray(rng.normal(size=(D, H, HD)), jnp.float32)}}}
  tx = normopt.block_normalize(blocks="leaf", norm="spectral")
  with pytest.raises(ValueError) as err:
    tx.update(g, tx.init(g))
  for word in ("['attn']['query']['kernel']", "stacked=", "param_layouts"):
    assert word in str(err.value)
  # Either fix settles it: the layer view of the layout, or stacked=.
  layout = {"attn": {"query": {"kernel": normopt.ParamLayout("hidden", (0,), (1, 2))}}}
  u, _ = normopt.block_normalize(blocks="leaf", norm="spectral", layout=layout,
                                 ns_coeffs="cubic", ns_steps=40).update(g, None)
  m = np.asarray(u["attn"]["query"]["kernel"]).reshape(D, H * HD)
  np.testing.assert_allclose(np.linalg.svd(m, compute_uv=False), 1.0, atol=1e-3)
  u, _ = normopt.block_normalize(blocks="leaf", norm="spectral",
                                 stacked={"attn": 1}).update(g, None)
  assert u["attn"]["query"]["kernel"].shape == (D, H, HD)


def test_muon_sends_unknown_leaf_to_adam_with_one_warning():
  params = {"attn": jnp.ones((D, H, HD)), "w": jnp.ones((D, D))}
  tx = normopt.muon(0.02)
  with pytest.warns(UserWarning, match=r"\['attn'\]") as rec:
    state = tx.init(params)
    jax.jit(tx.update)(params, state, params)
  assert len([w for w in rec if "muon" in str(w.message)]) == 1
  adam = optax.adam(0.02, eps=1e-8, nesterov=True)
  u_ref, _ = adam.update({"attn": params["attn"]}, adam.init({"attn": params["attn"]}))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    u, _ = tx.update(params, tx.init(params), params)
  chex.assert_trees_all_close(u["attn"], u_ref["attn"], rtol=1e-6)


def test_stacked_and_layout_must_agree():
  g = {"layers": {"kernel": jnp.ones((3, 4, 4))}}
  lay = normopt.layouts_from_shapes(g, stacked=normopt.stacked_under("layers"))
  tx = normopt.block_normalize(blocks="leaf", norm="spectral", layout=lay, stacked={"layers": 1})
  tx.update(g, None)  # agree
  bad = normopt.block_normalize(blocks="leaf", norm="spectral", layout=lay,
                                stacked={"layers": 2})
  with pytest.raises(ValueError, match=r"\['layers'\]\['kernel'\]"):
    bad.update(g, None)


def test_strict_overrides_and_custom_params():
  class M(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.initializers.ones, (x.shape[-1], 3))
      pos = self.param("pos", nn.initializers.ones, (5, x.shape[-1]))
      return nn.Dense(2, name="d")(x @ w + pos.sum())

  x = _sds(4, 6)
  lay = normopt.param_layouts(M(), x)
  assert sorted(lay.unknown()) == ["pos", "w"]
  with pytest.raises(ValueError, match="pos.*w|w.*pos"):
    normopt.param_layouts(M(), x, strict=True)
  fixed = normopt.param_layouts(
      M(), x, strict=True,
      overrides={"w": DN(0, 1), "pos": normopt.ParamLayout("embedding", (0,), (1,))})
  assert fixed["w"].kind == "hidden" and fixed["pos"].kind == "embedding"
  assert fixed["pos"].source == "override"
  assert normopt.param_layouts(M(), x, overrides={"w": None})["w"].kind == "bias"


def test_unit_blocks_follow_the_layout():
  """blocks="unit": one output unit per (stacked slice, head, output index),
  a vector over the reduction axes; a bias is one block."""
  rng = np.random.default_rng(3)
  g = {"q": {"kernel": jnp.asarray(rng.normal(size=(D, H, HD)), jnp.float32),
             "bias": jnp.asarray(rng.normal(size=(H, HD)), jnp.float32)}}
  lay = {"q": {"kernel": normopt.ParamLayout("hidden", (0,), (2,), batch=(1,)),
               "bias": normopt.ParamLayout("bias", (), (0, 1))}}
  u, _ = normopt.block_normalize(blocks="unit", layout=lay).update(g, None)
  k = np.asarray(u["q"]["kernel"])
  np.testing.assert_allclose(np.linalg.norm(k, axis=0), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(u["q"]["bias"])), 1.0, rtol=1e-5)
  # The default rule: a leaf named bias is one block, whatever its rank.
  u, _ = normopt.block_normalize(blocks="unit").update(
      {"q": {"bias": g["q"]["bias"]}}, None)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(u["q"]["bias"])), 1.0, rtol=1e-5)


def test_layouts_page_table_is_what_param_layouts_prints(capsys):
  """docs/layouts.md shows the printed table of a real model: run its code."""
  import pathlib
  import re
  page = (pathlib.Path(__file__).parents[1] / "docs" / "layouts.md").read_text()
  code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
  shown = re.search(r"```text\n(.*?)```", page, re.S).group(1).strip()
  exec(compile(code, "docs/layouts.md", "exec"), {})
  assert capsys.readouterr().out.strip() == shown


def test_dimension_numbers_as_layout_give_the_same_matrices():
  """layout= and overrides= take optax's MuonDimensionNumbers (DESIGN §8): on a
  3-axis leaf, every other axis a batch axis, as the ParamLayout says."""
  rng = np.random.default_rng(4)
  g = {"w": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)}
  as_dn = {"w": DN(1, 2)}
  as_pl = {"w": normopt.ParamLayout("hidden", (1,), (2,), batch=(0,))}
  tx = lambda lay: normopt.block_normalize(blocks="leaf", norm="spectral", layout=lay)
  chex.assert_trees_all_equal(tx(as_dn).update(g, None)[0], tx(as_pl).update(g, None)[0])
  over = normopt.layouts_from_shapes(g, overrides={"w": DN(1, 2)})["w"]
  assert (over.batch, over.reduction, over.output, over.source) == ((0,), (1,), (2,), "override")

"""Newton–Schulz options: ``preconditioning`` and the Polar Express preset (DESIGN §9).

``preconditioning="aol"``/``"schatten"`` (and ``"frobenius"``) against optax's
Muon with the same option, and against float64 NumPy written from the
definitions; ``ns_coeffs="polar_express"`` against a float64 NumPy transcription
of Amsel et al.'s reference iteration (NoahAmsel/PolarExpress,
``polar_express/basic.py``), and their claim that it orthogonalizes better
than Muon's coefficients at equal work.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from normopt.norms import NS_PRESETS

PRECONDITIONINGS = ["frobenius", "aol", "schatten"]
MUON = NS_PRESETS["muon"]
# Wide, tall and square matrices, and a batch, as (B, m, n).
SHAPES = [(1, 16, 40), (1, 40, 16), (1, 24, 24), (3, 12, 20)]


def _optax_ns(x, coeffs, steps, preconditioning, eps):
  """optax's orthogonalization (``orthogonalize_via_newton_schulz``), through
  its public ``scale_by_muon`` with no momentum, each batch index a matrix."""
  coeffs = np.asarray(coeffs)
  if coeffs.ndim == 2:
    steps = coeffs.shape[0]
  tx = optax.contrib.scale_by_muon(
      ns_coeffs=coeffs, ns_steps=steps, beta=0.0, eps=eps, nesterov=False,
      preconditioning=preconditioning,
      weight_dimension_numbers=optax.contrib.MuonDimensionNumbers(1, 2))
  return tx.update(x, tx.init(x))[0]


def _np_steps(x, rows):
  for a, b, c in rows:
    g = x @ x.T
    x = a * x + (b * g + c * g @ g) @ x
  return x


def _np_ns(x, rows, preconditioning, eps):
  """float64 NumPy: optax's definition of each preconditioning, the first
  step on the rescaled matrix, then the rest (wide orientation)."""
  x = np.asarray(x, np.float64)
  wide = x.shape[0] <= x.shape[1]
  x = x if wide else x.T
  if preconditioning == "frobenius":
    x = x / (np.linalg.norm(x) + eps)
  elif preconditioning == "aol":
    g = x @ x.T
    for i in range(x.shape[0]):
      x[i] = x[i] / np.sqrt(max(np.abs(g[i]).sum(), eps))
  else:  # schatten: the Schatten-4 norm, sqrt of ‖X Xᵀ‖_F
    x = x / np.sqrt(max(np.linalg.norm(x @ x.T), eps))
  x = _np_steps(x, rows)
  return x if wide else x.T


def _np_polar_express(x, steps):
  """The reference's PolarExpress(G, steps), in float64: its 8 rows, every
  one but the last divided by the safety factor 1.01 as ``(a/s, b/s³, c/s⁵)``,
  ``X/(1.01·‖X‖_F + 1e-7)``, the last row repeated past the eighth step."""
  raw = [
      (8.28721201814563, -23.595886519098837, 17.300387312530933),
      (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
      (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
      (3.3184196573706015, -2.488488024314874, 0.51004894012372),
      (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
      (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
      (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
      (1.875, -1.25, 0.375),
  ]
  rows = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in raw[:-1]] + [raw[-1]]
  rows = (rows + [rows[-1]] * steps)[:steps]
  x = np.asarray(x, np.float64)
  wide = x.shape[0] <= x.shape[1]
  x = x if wide else x.T
  x = x / (np.linalg.norm(x) * 1.01 + 1e-7)
  x = _np_steps(x, rows)
  return x if wide else x.T


def _mats(seed, shape, dtype=np.float32):
  return np.random.default_rng(seed).normal(size=shape).astype(dtype)


@pytest.mark.fast_cases("muon-aol-True", "dion-schatten-False")
@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("preconditioning", PRECONDITIONINGS)
@pytest.mark.parametrize("coeffs", ["muon", "dion"])
def test_equals_optax(preconditioning, gram, coeffs):
  rows = NS_PRESETS[coeffs]
  mats = [jnp.asarray(_mats(i, s)) for i, s in enumerate(SHAPES)]
  got = jax.jit(lambda ms: normopt.polar_factors(
      ms, ns_coeffs=rows, eps=1e-8, gram=gram, preconditioning=preconditioning))(mats)
  for x, y in zip(mats, got, strict=True):
    want = _optax_ns(x, rows, 5, preconditioning, 1e-8)
    # The Gram form on square matrices squares their condition number: 1-3e-5
    # off optax's float32 (polar_factors' docstring).
    atol = 4e-5 if gram and x.shape[1] == x.shape[2] else 4e-6 if gram else 2e-6
    np.testing.assert_allclose(y, want, atol=atol, err_msg=str(x.shape))


@pytest.mark.fast_cases("schatten-True")
@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("preconditioning", ["aol", "schatten"])
def test_traced_steps_equal_optax(preconditioning, gram):
  # ns_steps an array (optax.inject_hyperparams): a fori_loop after the first step.
  x = jnp.asarray(_mats(5, (2, 12, 20)))
  run = jax.jit(lambda m, k: normopt.polar_factors(
      [m], ns_steps=k, ns_coeffs=MUON, eps=1e-8, gram=gram,
      preconditioning=preconditioning)[0])
  for k in (1, 3, 5):
    want = _optax_ns(x, MUON, k, preconditioning, 1e-8)
    np.testing.assert_allclose(run(x, jnp.asarray(k)), want, atol=2e-6, err_msg=str(k))
  # No steps: the rescaled matrix, as the unrolled form gives it (optax
  # returns its input unscaled here).
  unrolled = normopt.polar_factors(
      [x], ns_steps=0, ns_coeffs=MUON, eps=1e-8, gram=gram, preconditioning=preconditioning)[0]
  np.testing.assert_allclose(run(x, jnp.asarray(0)), unrolled, rtol=1e-6)


@pytest.mark.fast_cases("aol-False", "schatten-True")
@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("preconditioning", PRECONDITIONINGS)
def test_matches_numpy_float64(preconditioning, gram):
  rows = NS_PRESETS["dion"]
  with jax.enable_x64(True):
    for seed, shape in enumerate([(7, 11), (11, 7), (9, 9)]):
      x = _mats(10 + seed, shape, np.float64)
      x[0] *= 20.0  # uneven rows: AOL's row scaling differs from a scalar one
      got = normopt.polar_factors(
          [jnp.asarray(x[None])], ns_coeffs=rows, eps=1e-8, gram=gram,
          preconditioning=preconditioning)[0][0]
      assert got.dtype == jnp.float64
      np.testing.assert_allclose(
          np.asarray(got), _np_ns(x, rows, preconditioning, 1e-8), atol=1e-10, err_msg=str(shape))


@pytest.mark.fast_cases("8")
@pytest.mark.parametrize("steps", [3, 5, 8, 10])
def test_polar_express_matches_reference_float64(steps):
  rows = NS_PRESETS["polar_express"]
  rows = (list(rows) + [rows[-1]] * steps)[:steps]  # the reference repeats its last row
  with jax.enable_x64(True):
    for seed, shape in enumerate([(6, 10), (10, 6), (8, 8)]):
      x = _mats(20 + seed, shape, np.float64)
      got = normopt.polar_factors([jnp.asarray(x[None])], ns_coeffs=rows, eps=1e-7 / 1.01)[0][0]
      np.testing.assert_allclose(
          np.asarray(got), _np_polar_express(x, steps), atol=1e-10, err_msg=str(shape))


def test_polar_express_preset_defaults_to_eight_steps():
  assert len(NS_PRESETS["polar_express"]) == 8
  x = jnp.asarray(_mats(30, (1, 10, 14)))
  got = normopt.polar_factors([x], ns_coeffs="polar_express")[0]
  same = normopt.polar_factors([x], ns_coeffs=NS_PRESETS["polar_express"], ns_steps=3)[0]
  np.testing.assert_array_equal(got, same)  # a sequence's length is its step count
  np.testing.assert_allclose(got[0], _np_polar_express(x[0], 8), atol=2e-6)


@pytest.mark.parametrize("preconditioning", PRECONDITIONINGS)
def test_converging_limits(preconditioning):
  # With the converging cubic: orthogonal rows each time; U Vᵀ itself for the
  # scalar rescalings, while AOL's uneven row scaling leads elsewhere.
  x = _mats(60, (12, 20))
  x[0] *= 30.0
  u, _, vt = np.linalg.svd(x, full_matrices=False)
  y = normopt.polar_factors([jnp.asarray(x[None])], ns_coeffs="cubic", ns_steps=40,
                            preconditioning=preconditioning)[0][0]
  np.testing.assert_allclose(np.linalg.svd(np.asarray(y), compute_uv=False), 1.0, atol=1e-5)
  off = np.abs(np.asarray(y) - u @ vt).max()
  assert off > 1e-2 if preconditioning == "aol" else off < 1e-5, off


def _ill_conditioned(rng, m, n, cond):
  r = min(m, n)
  u = np.linalg.qr(rng.normal(size=(m, r)))[0]
  v = np.linalg.qr(rng.normal(size=(n, r)))[0]
  return (u * np.logspace(0, -np.log10(cond), r)) @ v.T


@pytest.mark.fast_cases("5-gaussian")
@pytest.mark.parametrize("kind", ["gaussian", "ill_conditioned"])
@pytest.mark.parametrize("steps", [5, 8])
def test_polar_express_beats_muon_at_equal_steps(kind, steps):
  # Amsel et al.'s claim: at the same number of matmul steps, the singular
  # values end tighter around 1 than with Muon's coefficients (within the
  # condition numbers the preset is designed for, about 1e3).
  rng = np.random.default_rng(40)
  for m, n in [(64, 128), (128, 64), (48, 48)]:
    if kind == "gaussian":
      x = rng.normal(size=(m, n))
    else:
      x = _ill_conditioned(rng, m, n, 1e3)
    x = jnp.asarray(x[None], jnp.float32)
    pe = normopt.polar_factors([x], ns_coeffs=NS_PRESETS["polar_express"][:steps])[0][0]
    mu = normopt.polar_factors([x], ns_coeffs="muon", ns_steps=steps)[0][0]
    err_pe = np.abs(np.linalg.svd(np.asarray(pe), compute_uv=False) - 1).max()
    err_mu = np.abs(np.linalg.svd(np.asarray(mu), compute_uv=False) - 1).max()
    assert err_pe < err_mu, (m, n, err_pe, err_mu)
    if steps == 8:  # converged; Muon's stay ~0.3 off
      assert err_pe < 1e-3 and err_mu > 0.25, (m, n, err_pe, err_mu)


@pytest.mark.fast_cases("aol-True-bfloat16", "schatten-False-float32")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("preconditioning", PRECONDITIONINGS)
def test_zeros_give_zeros(preconditioning, gram, dtype):
  # A zero matrix, a matrix with a zero row (AOL's per-row scale) and a
  # nonzero one; through jax.grad too.
  x = jnp.zeros((3, 5, 8), dtype)
  x = x.at[1, 1:].set(jnp.asarray(_mats(50, (4, 8)), dtype))
  x = x.at[2].set(jnp.asarray(_mats(51, (5, 8)), dtype))
  for coeffs in ("muon", "polar_express"):
    run = lambda m, c=coeffs: normopt.polar_factors(
        [m], ns_coeffs=c, gram=gram, preconditioning=preconditioning)[0]
    y = jax.jit(run)(x)
    assert y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(y[0], 0.0)
    np.testing.assert_array_equal(y[1, 0], 0.0)
    assert float(jnp.abs(y[2]).max()) > 0.1
    grad = jax.jit(jax.grad(lambda m, r=run: jnp.sum(r(m) * jnp.arange(40.0).reshape(5, 8))))(
        x.astype(jnp.float32))
    assert bool(jnp.all(jnp.isfinite(grad))), coeffs


def test_unknown_preconditioning_raises():
  with pytest.raises(ValueError, match="preconditioning"):
    normopt.polar_factors([jnp.ones((1, 3, 4))], preconditioning="spectral")

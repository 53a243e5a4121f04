"""Regularized softmax (normopt.losses, normopt.flax_losses) against float64 NumPy references."""

import ast
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import normopt
from normopt.flax_losses import BNSoftmax


def np_bn(z, gamma, eps, mean=None, var=None):
  z = np.asarray(z, np.float64)
  ax = tuple(range(z.ndim - 1))
  mean = z.mean(axis=ax) if mean is None else mean
  var = ((z - mean) ** 2).mean(axis=ax) if var is None else var
  return gamma * (z - mean) / np.sqrt(var + eps)


def test_logit_l2_penalty_value_and_gradient():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(4, 5, 7)) * 3  # two batch axes, 7 classes
  got = normopt.losses.logit_l2_penalty(jnp.asarray(z, jnp.float32), 1e-2)
  want = 1e-2 / 2 * np.mean(np.sum(z**2, axis=-1))
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  g = jax.grad(normopt.losses.logit_l2_penalty)(jnp.asarray(z, jnp.float32), 1e-2)
  np.testing.assert_allclose(np.asarray(g), 1e-2 * z / 20, rtol=1e-5)
  # bf16 logits are accumulated in float32.
  zb = jnp.full((8, 10), 100.0, jnp.bfloat16)
  assert normopt.losses.logit_l2_penalty(zb, 1.0).dtype == jnp.float32
  with pytest.raises(ValueError, match="class axis"):
    normopt.losses.logit_l2_penalty(jnp.float32(1.0), 1.0)


def test_batch_normalize_logits_matches_numpy():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(32, 5)) * 4 + 3
  got = normopt.losses.batch_normalize_logits(jnp.asarray(z, jnp.float32), 2.5, 1e-5)
  chex.assert_trees_all_close(got, np_bn(z, 2.5, 1e-5), rtol=1e-5, atol=1e-5)
  mean, var = rng.normal(size=5), rng.uniform(0.5, 2.0, size=5)
  got = normopt.losses.batch_normalize_logits(jnp.asarray(z, jnp.float32), 2.5, 1e-5, mean, var)
  chex.assert_trees_all_close(got, np_bn(z, 2.5, 1e-5, mean, var), rtol=1e-5, atol=1e-5)


def test_bn_softmax_module_train_and_eval():
  rng = np.random.default_rng(2)
  batches = [rng.normal(size=(16, 4)) * 3 + rng.normal(size=4) for _ in range(4)]
  m = BNSoftmax(gamma=1.5, momentum=0.8, epsilon=1e-5)
  variables = m.init(jax.random.key(0), jnp.zeros((16, 4)), train=True)
  assert "params" not in variables  # no trainable scale or shift
  np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(4))

  apply_train = jax.jit(lambda v, z: m.apply(v, z, train=True, mutable=["batch_stats"]))
  ra_mean, ra_var = np.zeros(4), np.ones(4)
  for z in batches:
    y, upd = apply_train(variables, jnp.asarray(z, jnp.float32))
    variables = {"batch_stats": upd["batch_stats"]}
    chex.assert_trees_all_close(y, np_bn(z, 1.5, 1e-5), rtol=1e-4, atol=1e-5)
    ra_mean = 0.8 * ra_mean + 0.2 * z.mean(0)
    ra_var = 0.8 * ra_var + 0.2 * z.var(0)
  chex.assert_trees_all_close(variables["batch_stats"]["mean"], ra_mean, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(variables["batch_stats"]["var"], ra_var, rtol=1e-5, atol=1e-6)

  z = rng.normal(size=(3, 4))  # eval: running statistics, nothing mutated
  y = m.apply(variables, jnp.asarray(z, jnp.float32), train=False)
  chex.assert_trees_all_close(y, np_bn(z, 1.5, 1e-5, ra_mean, ra_var), rtol=1e-4, atol=1e-5)


_BLOCK_FLAX = (
    "import sys\n"
    "class Block:\n"
    "  def find_spec(self, name, path=None, target=None):\n"
    "    if name == 'flax' or name.startswith('flax.'):\n"
    "      raise ImportError('flax blocked')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run_without_flax(code):
  return subprocess.run([sys.executable, "-c", _BLOCK_FLAX + code], capture_output=True,
                        text=True, check=True, timeout=120).stdout.split("\n")


def test_import_normopt_and_losses_without_flax():
  out = _run_without_flax(
      "import jax.numpy as jnp, normopt\n"
      "import normopt.losses\n"
      "from normopt.losses import *\n"
      "assert 'flax' not in sys.modules\n"
      "print(sorted(normopt.losses.__all__))\n"
      "print(float(logit_l2_penalty(jnp.ones((2, 3)), 2.0)))\n"
      "print(batch_normalize_logits(jnp.arange(6.0).reshape(3, 2)).shape)\n"
      "print(hasattr(normopt.losses, 'BNSoftmax'))\n"
      "try:\n"
      "  import normopt.flax_losses\n"
      "except ImportError as e:\n"
      "  print('ImportError', e)\n"
  )
  assert out[:4] == ["['batch_normalize_logits', 'logit_l2_penalty']", "3.0", "(3, 2)", "False"]
  assert out[4] == "ImportError flax blocked"


def test_losses_never_imports_flax_or_the_flax_module():
  # The dependency is one-directional: flax_losses imports losses, never the reverse.
  def imports(path):
    tree = ast.parse(pathlib.Path(path).read_text())
    names = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        names.add(node.module or "")
        names.update(f"{node.module}.{a.name}" for a in node.names)
    return names
  import normopt.flax_losses
  mine = imports(normopt.losses.__file__)
  assert not any(n.startswith("flax") or "flax_losses" in n for n in mine), mine
  assert "normopt.losses" in imports(normopt.flax_losses.__file__)

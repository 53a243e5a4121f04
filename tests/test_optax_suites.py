"""optax's own contrib suite over every normopt alias.

optax checks each of its contributed optimizers with one shared suite,
``optax/contrib/_common_test.py``. The bodies of its per-optimizer tests are
run here, imported from the installed optax (absl's ``parameterized``
generates ``name0``, ``name1``, ... around each body; the body itself is
what they wrap), with the suite's factory lookup pointed at normopt's
aliases: every registry method (``tests/methods_registry.py``) whose factory
takes a learning rate (``learning_rate``, ``learning_rates``,
``learning_rate_*``), with the registry's keyword arguments. A new alias
joins by being registered.

The checks, by optax's names:

* ``test_optimizers_can_be_wrapped_in_inject_hyperparams``: the same updates
  and the same state (``inner_state``) under ``optax.inject_hyperparams``;
* ``test_optimizers_accept_extra_args``, and no recompile on the 2nd call;
* ``test_preserve_dtype`` and ``test_gradient_accumulation`` (``MultiSteps``)
  in bfloat16 and float32;
* ``test_state_shape_dtype_shard_stability`` in float16 to float64;
* ``test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such``
  (aliases that take ``learning_rate``);
* ``test_optimizers``: 30 000 steps on four targets must land within 3e-2.

The inject check is in the fast loop; the rest are ``slow``.
"""

from __future__ import annotations

import functools
import inspect
import re

import jax.numpy as jnp
import optax
import pytest

from methods_registry import fast_first
from methods_registry import METHODS

_common = pytest.importorskip(
    "optax.contrib._common_test", reason="the installed optax ships its contrib suite")


def _base(make):
  while isinstance(make, functools.partial):
    make = make.func
  return make


def _takes(method, prefix):
  return any(p.startswith(prefix) for p in inspect.signature(_base(method.make)).parameters)


ALIASES = [m for m in METHODS if _takes(m, "learning_rate")]
IDS = [m.name for m in ALIASES]
BY_NAME = {m.name: m for m in ALIASES}
TARGETS = {
    "parabola": _common._setup_parabola,
    "rosenbrock": _common._setup_rosenbrock,
    "matrix_parabola": _common._setup_matrix_parabola,
    "mixed_tensor_target": _common._setup_mixed_tensor_target,
}

# The inject check trains on ``[ones((2, 3)), ones((2, 5, 2))]``. To the
# spectral family a leaf with exactly three non-stacked axes is neither a
# matrix nor a Conv kernel: scion raises a ValueError for it (muon gives it to
# Adam, with a warning, and runs as it is). So scion is told what the leaf
# is, as a user would: ``stacked=[0, 1]``, a pytree prefix of the params,
# makes the leading axis of the second leaf a stack of two (5, 2) layers.
# inject_hyperparams leaves a list static (only numbers, arrays and callables
# become hyperparameters), so the wrapped and the plain scion see one spec.
INJECT_KWARGS = {
    "scion": dict(stacked=[0, 1]),
    "scion:scg": dict(stacked=[0, 1]),
}


def _cosine(lr):
  return optax.cosine_decay_schedule(lr, 30_000)


# The convergence check runs 30 000 steps at the registry's rate unless an
# alias's method needs another setting to converge, as a user would set it:
CONVERGE_KWARGS = {
    # A normalized step has length lr whatever the gradient, so at a constant
    # rate it circles the minimum at distance ~lr (and zigzags slowly down
    # Rosenbrock's valley). These converge with a rate that decays to 0, as
    # SNGD's analysis and S-SNGD's stages prescribe.
    "sgd_ng": dict(learning_rate=_cosine(0.1)),
    "sngd": dict(learning_rate=_cosine(0.1)),
    "scion": dict(learning_rate=_cosine(1e-2)),
    # SCG keeps the params in the norm ball of radius ``radius`` (a convex
    # combination of LMO points); the targets lie outside radius 1.
    "scion:scg": dict(learning_rate=_cosine(0.1), radius=10.0),
    # Its step is lr·g/(δ + sqrt(Σ ĝ²)): gradient descent at a rate that
    # shrinks as the sum grows. The sum is ~1 at first, and at 0.1 Rosenbrock
    # (curvature ~10³) diverges, as plain gradient descent would; a warmup
    # lets the sum grow first.
    "adagrad_bng": dict(learning_rate=optax.warmup_cosine_decay_schedule(0.0, 0.1, 3_000, 30_000)),
}
# ND-Adam keeps every unit vector (the columns of a 2-D leaf) on the unit
# sphere by design; these targets' columns are not on it.
CANNOT_REACH = {
    ("nd_adam", "matrix_parabola"): "nd_adam keeps unit vectors on the sphere",
    ("nd_adam", "mixed_tensor_target"): "nd_adam keeps unit vectors on the sphere",
}


def _factory(make):
  """``make`` with its annotations evaluated in its signature (normopt's
  modules use ``from __future__ import annotations``), so that optax's
  schedule check sees ``learning_rate: optax.ScalarOrSchedule``."""
  try:
    sig = inspect.signature(make, eval_str=True)
  except (NameError, TypeError):
    return make

  @functools.wraps(make)
  def factory(*args, **kwargs):
    return make(*args, **kwargs)

  factory.__signature__ = sig
  return factory


def _body(name):
  """optax's test method ``name``, undecorated."""
  for attr, fn in vars(_common.ContribTest).items():
    if re.fullmatch(re.escape(name) + r"\d+", attr):
      body = inspect.unwrap(fn)
      assert "opt_name" in inspect.signature(body).parameters, (name, body)
      return body
  raise LookupError(f"optax's contrib suite has no test {name!r}")


@pytest.fixture
def run_optax_test(monkeypatch):
  """``run(test, method, kwargs, **params)``: optax's body ``test`` on the
  alias ``method`` (``opt_name`` is the registry name) built with ``kwargs``."""
  factories = {m.name: _factory(m.make) for m in ALIASES}
  monkeypatch.setattr(_common, "_get_opt_factory", lambda name: factories[name])

  def run(test, method, kwargs, **params):
    case = _common.ContribTest("runTest")
    _body(test)(case, opt_name=method.name, opt_kwargs=kwargs, **params)

  return run


# muon warns that it gives the 3-D leaf (see INJECT_KWARGS) to Adam.
@pytest.mark.filterwarnings("ignore:muon. no layout says")
@pytest.mark.parametrize("method", fast_first(ALIASES))
def test_optimizers_can_be_wrapped_in_inject_hyperparams(run_optax_test, method):
  kwargs = dict(method.kwargs, **INJECT_KWARGS.get(method.name, {}))
  run_optax_test("test_optimizers_can_be_wrapped_in_inject_hyperparams", method, kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("method", ALIASES, ids=IDS)
def test_optimizers_accept_extra_args(run_optax_test, method):
  run_optax_test("test_optimizers_accept_extra_args", method, dict(method.kwargs),
                 wrapper_name=None, wrapper_kwargs=None, wrap=False)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("method", ALIASES, ids=IDS)
def test_preserve_dtype(run_optax_test, method, dtype):
  run_optax_test("test_preserve_dtype", method, dict(method.kwargs), dtype=dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("method", ALIASES, ids=IDS)
def test_gradient_accumulation(run_optax_test, method, dtype):
  run_optax_test("test_gradient_accumulation", method, dict(method.kwargs), dtype=dtype)


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64],
    ids=["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("method", ALIASES, ids=IDS)
def test_state_shape_dtype_shard_stability(run_optax_test, method, dtype):
  run_optax_test("test_state_shape_dtype_shard_stability", method, dict(method.kwargs),
                 wrapper_name=None, wrapper_kwargs=None, dtype=dtype)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", [m for m in ALIASES if "learning_rate" in inspect.signature(m.make).parameters],
    ids=lambda m: m.name)
def test_optimizers_accept_learning_rate_schedule(run_optax_test, method):
  run_optax_test(
      "test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such",
      method, dict(method.kwargs), wrapper_name=None, wrapper_kwargs=None)


@pytest.mark.slow
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("method", ALIASES, ids=IDS)
def test_optimizers_converge(run_optax_test, method, target):
  if (method.name, target) in CANNOT_REACH:
    pytest.skip(CANNOT_REACH[method.name, target])
  kwargs = dict(method.kwargs, **CONVERGE_KWARGS.get(method.name, {}))
  run_optax_test("test_optimizers", method, kwargs, wrapper_name=None,
                 wrapper_kwargs=None, target=TARGETS[target], dtype="float32")


def test_every_alias_is_in_the_suite():
  # The registry's aliases (those named in normopt.aliases and the Muon and
  # Scion recipes among them) are all here, and every override names one.
  assert {"adam_ng", "sngd", "s_sngd", "nd_adam", "muon", "scion"} <= set(BY_NAME)
  overrides = set(INJECT_KWARGS) | set(CONVERGE_KWARGS) | {n for n, _ in CANNOT_REACH}
  assert overrides <= set(BY_NAME), overrides - set(BY_NAME)

"""Every method in normopt, for the shared conformance suite.

A new transformation or optimizer joins the suite by being listed here.
``kwargs`` name every numeric hyperparameter explicitly, so that
``optax.inject_hyperparams`` turns them into traced arrays. ``make`` must be a
function or ``functools.partial`` (not a ``**kwargs`` lambda), so that
``inject_hyperparams`` can read its signature.
"""

from collections.abc import Callable
import functools
from typing import Any, NamedTuple

import optax

import normopt


class Method(NamedTuple):
  name: str
  make: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any]
  needs_params: bool = False
  # "any": arbitrary params; "sphere": vector leaves are put on the unit
  # sphere first (ND-Adam style methods).
  params_kind: str = "any"


# Unscaled Adam-type primitives give updates of size ~1, where a traced
# float32 b2 and a Python-float b2 round the bias correction differently
# (~1e-4 relative after 3 steps; optax.scale_by_adam shows the same against
# inject_hyperparams). Scaling by 1e-2, as a learning rate would, keeps that
# inside the suite's tolerance while testing the primitive itself.
def _adanorm_moments_small(
  gamma, b1, b2, eps, eps_root, threshold, *, blocks="leaf", stacked=None, axis_name=None
):
  # Explicit keywords (tests/distributed_checks.py and stacked_checks.py pass
  # them), not **kw: inject_hyperparams would bind a **kw parameter as an
  # argument named "kw".
  return optax.chain(
    normopt.scale_by_adanorm_moments(
      kind="adam",
      gamma=gamma,
      b1=b1,
      b2=b2,
      eps=eps,
      eps_root=eps_root,
      threshold=threshold,
      blocks=blocks,
      stacked=stacked,
      axis_name=axis_name,
    ),
    optax.scale(1e-2),
  )


def _diffgrad_small(b1, b2, eps, eps_root):
  return optax.chain(
    normopt.scale_by_diffgrad(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
    optax.scale(1e-2),
  )


def _spectral(eps, *, stacked=None):
  # No blocks= (spectral is per leaf) and no axis_name= (it raises there), so
  # the stacked and distributed checks run it in its leaf mode, without psum.
  return normopt.block_normalize(blocks="leaf", eps=eps, stacked=stacked, norm="spectral")


METHODS = [
  # --- blocks / BNG / SNGD (normalization.py, aliases.py)
  Method("block_normalize", normopt.block_normalize, dict(eps=1e-12)),
  Method(
    "block_normalize_unit",
    functools.partial(normopt.block_normalize, blocks="unit"),
    dict(eps=1e-12),
  ),
  Method(
    "block_normalize:rms", functools.partial(normopt.block_normalize, norm="rms"), dict(eps=1e-12)
  ),
  Method("block_normalize:sign", functools.partial(normopt.block_normalize, norm="sign"), dict()),
  Method("block_normalize:spectral", _spectral, dict(eps=1e-12)),
  Method(
    "ngadap_scale", normopt.ngadap_scale, dict(alpha=0.02, eps=1e-12, min_param_norm=0.0), True
  ),
  Method("clip_block_norm", normopt.clip_block_norm, dict(max_norm=0.5)),
  Method("scale_by_adagrad_bng", normopt.scale_by_adagrad_bng, dict(delta=1e-8)),
  Method("sgd_ng", normopt.sgd_ng, dict(learning_rate=0.1, momentum=0.9, weight_decay=0.0)),
  Method(
    "adam_ng",
    normopt.adam_ng,
    dict(learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
  ),
  Method(
    "adagrad_ng",
    normopt.adagrad_ng,
    dict(learning_rate=0.1, initial_accumulator_value=0.1, eps=1e-7, weight_decay=0.0),
  ),
  Method(
    "sgd_ngadap",
    normopt.sgd_ngadap,
    dict(learning_rate=0.1, momentum=0.9, alpha=0.02, weight_decay=0.0),
    True,
  ),
  Method(
    "adam_ngadap",
    normopt.adam_ngadap,
    dict(learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8, alpha=0.02, weight_decay=0.0),
    True,
  ),
  Method("adagrad_bng", normopt.adagrad_bng, dict(learning_rate=0.1, delta=1e-8, weight_decay=0.0)),
  Method("sngd", normopt.sngd, dict(learning_rate=0.1, weight_decay=0.0)),
  Method("s_sngd", functools.partial(normopt.s_sngd, [0.1, 0.01], 0.2), dict(weight_decay=0.0)),
  # --- Muon from the spectral primitive (muon.py)
  Method("scale_by_muon_momentum", normopt.scale_by_muon_momentum, dict(beta=0.95)),
  Method("scale_by_width", normopt.scale_by_width, dict()),
  Method("muon", normopt.muon, dict(learning_rate=1e-2, beta=0.95)),
  # --- AdaNorm + diffGrad (adanorm.py)
  Method("adanorm_rescale", normopt.adanorm_rescale, dict(gamma=0.95, eps=1e-12)),
  Method(
    "scale_by_adanorm_moments",
    _adanorm_moments_small,
    dict(gamma=0.95, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0),
  ),
  Method("scale_by_diffgrad", _diffgrad_small, dict(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0)),
  Method(
    "adam_norm",
    normopt.adam_norm,
    dict(
      learning_rate=1e-2,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      eps_root=0.0,
      gamma=0.95,
      eps_norm=1e-12,
      weight_decay=0.0,
    ),
  ),
  Method(
    "diffgrad",
    normopt.diffgrad,
    dict(learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=0.0),
  ),
  Method(
    "diffgrad_norm",
    normopt.diffgrad_norm,
    dict(
      learning_rate=1e-2,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      gamma=0.95,
      eps_root=0.0,
      eps_norm=1e-12,
      weight_decay=0.0,
    ),
  ),
  Method(
    "radam_norm",
    normopt.radam_norm,
    dict(
      learning_rate=1e-2,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      eps_root=0.0,
      threshold=5.0,
      gamma=0.95,
      eps_norm=1e-12,
      weight_decay=0.0,
    ),
  ),
  Method(
    "adabelief_norm",
    normopt.adabelief_norm,
    dict(
      learning_rate=1e-2,
      b1=0.9,
      b2=0.999,
      eps=1e-16,
      eps_root=1e-16,
      gamma=0.95,
      eps_norm=1e-12,
      weight_decay=0.0,
    ),
  ),
  # --- ND-Adam (spherical.py)
  Method("spherical_project", normopt.spherical_project, dict(), True, "sphere"),
  Method("scale_by_vector_adam", normopt.scale_by_vector_adam, dict(b1=0.9, b2=0.999, eps=1e-8)),
  Method("spherical_retract", normopt.spherical_retract, dict(), True, "sphere"),
  Method(
    "nd_adam",
    normopt.nd_adam,
    dict(
      learning_rate_vector=0.05,
      learning_rate_scalar=1e-3,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
    ),
    True,
    "sphere",
  ),
  # --- Scion (scion.py): uSCG, and SCG, which needs params
  # The bare LMO step has the radius's size; at radius 1 a params-relative
  # check sees Newton-Schulz's float32 roundoff (amplified by up to a^5 for
  # small singular values) once the compiled fusions differ, as a traced and
  # a constant hyperparameter make them. 1e-2 plays the learning rate.
  Method("scale_by_scion", normopt.scale_by_scion, dict(momentum=0.1, radius=1e-2)),
  Method("scion", normopt.scion, dict(learning_rate=1e-2, momentum=0.1, radius=1.0)),
  Method(
    "scion:scg",
    functools.partial(normopt.scion, constrained=True),
    dict(learning_rate=1e-2, momentum=0.1, radius=1.0),
    True,
  ),
]

# --- The Muon family (muon_family.py): NorMuon and AdaMuon
METHODS += [
  Method("scale_by_unit_rms", normopt.scale_by_unit_rms, dict(decay=0.95, eps=1e-10)),
  Method("normuon", normopt.normuon, dict(learning_rate=1e-2, beta=0.95, b2=0.95)),
  Method("adamuon", normopt.adamuon, dict(learning_rate=1e-2, b1=0.9, b2=0.95, eps=1e-10, rms=0.2)),
]

#: One method per module of normopt (normalization, norms, aliases, schedules,
#: muon_recipe, adanorm, spherical, scion_lmo, muon_family). The fast loop,
#: ``pytest -m "not slow"``, runs the registry-wide suites on these; the full
#: suite runs them on every method (issue 30).
FAST = frozenset({
    "block_normalize", "block_normalize:spectral", "adam_ng", "s_sngd", "muon",
    "adam_norm", "nd_adam", "scion", "normuon",
})


def fast_param(*values, name, id=None):
  """``pytest.param(*values, id=id or name)``, marked ``slow`` unless the
  method ``name`` is in :data:`FAST`."""
  import pytest  # only the test files call this; the check scripts do not

  return pytest.param(*values, id=id or name, marks=() if name in FAST else pytest.mark.slow)


def fast_first(methods=None):
  """``methods`` (default: :data:`METHODS`) as ``pytest.param``s with their
  names as ids, every method outside :data:`FAST` marked ``slow``."""
  return [fast_param(m, name=m.name) for m in (METHODS if methods is None else methods)]

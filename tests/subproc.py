"""Runs a check script in a subprocess and reads the JSON on its last line.

The multi-device checks (``distributed_checks.py``, ``stacked_checks.py``,
``conventions_checks.py``) fix JAX's device count when JAX starts, so they run
in their own process, leaving this test session's devices alone.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Cheaper XLA:CPU compilation: the test programs are small and compiling
# them dominates. In this session's processes: XLA:CPU's older fusion
# emitters (its default until 2025), which compile small programs 2-3x faster
# than the current ones (an AdaNorm update: 0.41 s at LLVM -O0 with the
# current emitters, 0.16 s with these; the conformance and normalization
# suites 122 s -> 63 s), LLVM at -O1 (the conformance suite alone: 46 s at
# XLA's default level, 37 s at -O1; the whole suite, back to back on two
# cores, 458 s -> 373 s in a checkout and 466 s -> 434-451 s in fresh-clone
# CI runs), and without LLVM's expensive passes.
FAST_XLA = "--xla_llvm_disable_expensive_passes=true --xla_backend_optimization_level=1"
LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
# The check scripts compile a few large programs (dozens of methods each),
# where the older emitters take twice as long (a 32-case stacked program:
# 27.6 s, against 12.0 s at LLVM -O0 with the current emitters). Never -O0
# with the older emitters: that pair rounds differently enough to fail six
# tests (Scion's spectral_conv LMO off by 6e-4 instead of 6e-9; one entry of
# Muon's update 1e-4 off optax's), where -O1 with them passes every test.
CHECK_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Per-program compiler options (``jax.jit(..., compiler_options=...)``) of a
# compile-bound program in this session's processes: LLVM -O0, always with the
# current fusion emitters, whatever XLA_FLAGS hold (the same pair as
# benchmarks/_common.QUICK_CHEAP_COMPILE_OPTIONS; tests do not import benchmarks/).
CHEAP_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": True}
_PROBED = "NORMOPT_TEST_XLA_FLAGS"  # the probe's answer, for child processes
# The check scripts run collectives over 4-8 virtual CPU devices, one thread
# each, on a machine that may have 2 cores and another test worker compiling:
# a participant can start late enough that XLA's in-process rendezvous gives up
# (it aborts the process after 40 s by default; seen once on 2 cores, the
# distributed checks running beside the stacked ones). Here a late participant
# only makes the check slower.
PATIENT_COLLECTIVES = (
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120"
    " --xla_cpu_collective_call_terminate_timeout_seconds=900"
)
_PROBED_COLLECTIVES = "NORMOPT_TEST_XLA_COLLECTIVE_FLAGS"


def _accepted(flags):
  """Whether this jaxlib's XLA starts with ``flags`` (it aborts on an unknown flag)."""
  probe = subprocess.run(
      [sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
      timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags},
      check=False,
  )
  return probe.returncode == 0


def _probe():
  """Which optional flags this jaxlib takes, probed once (one subprocess when
  it takes both) and kept in the environment, which the test workers and
  subprocesses inherit."""
  if _PROBED in os.environ and _PROBED_COLLECTIVES in os.environ:
    return
  if _accepted(f"{LEGACY_EMITTERS} {PATIENT_COLLECTIVES}"):
    legacy = patient = True
  else:
    legacy, patient = _accepted(LEGACY_EMITTERS), _accepted(PATIENT_COLLECTIVES)
  os.environ[_PROBED] = FAST_XLA + (" " + LEGACY_EMITTERS if legacy else "")
  os.environ[_PROBED_COLLECTIVES] = PATIENT_COLLECTIVES if patient else ""


def fast_xla_flags():
  """:data:`FAST_XLA`, plus :data:`LEGACY_EMITTERS` if this jaxlib takes it.

  XLA aborts on a flag it does not know, so the flag is probed once, in a
  subprocess (XLA reads its flags once per process): :func:`_probe`.
  """
  _probe()
  return os.environ[_PROBED]


def with_fast_xla(flags):
  """``XLA_FLAGS`` value ``flags`` plus :func:`fast_xla_flags` (once)."""
  fast = fast_xla_flags()
  return flags if fast in flags else (flags + " " + fast).strip()


def check_xla(flags):
  """``XLA_FLAGS`` value ``flags`` with this session's fast flags swapped
  for :data:`CHECK_XLA` (the check scripts' large programs)."""
  fast = fast_xla_flags().split()
  kept = [f for f in flags.split() if f not in fast]
  return " ".join([*kept, CHECK_XLA, os.environ[_PROBED_COLLECTIVES]]).strip()


def env():
  """The environment for a check script: CPU, fast compiles, tests/ importable."""
  out = dict(os.environ)
  out["XLA_FLAGS"] = check_xla(out.get("XLA_FLAGS", ""))
  out["JAX_PLATFORMS"] = "cpu"
  out["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, out.get("PYTHONPATH")]))
  return out


def run_json(script, *args, timeout=900):
  """``python tests/<script> *args``; its last stdout line parsed as JSON."""
  proc = subprocess.run(
      [sys.executable, os.path.join(HERE, script), *args],
      capture_output=True, text=True, env=env(), timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])

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
# Cheaper XLA:CPU compilation: the programs are tiny and compile time
# dominates.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def env():
  """The environment for a check script: CPU, fast compiles, tests/ importable."""
  out = dict(os.environ)
  out["XLA_FLAGS"] = (out.get("XLA_FLAGS", "") + " " + FAST_XLA).strip()
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

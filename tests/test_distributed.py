"""Every registry method under sharded jit, shard_map, pmap and multi-process.

The checks need several devices; JAX fixes its device count when it starts,
so they run in subprocesses (``tests/distributed_checks.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=...``, leaving this test
session's devices alone. One subprocess serves all single-host checks and
returns per-case deviations from a one-device run as JSON.
"""

import json
import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from methods_registry import METHODS
from subproc import env as _env
from subproc import HERE
from subproc import run_json

# Whole-suite subprocess checks: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

SCRIPT = os.path.join(HERE, "distributed_checks.py")
TOL = 1e-5  # max |sharded - single device| / max(1, |single device|)


@pytest.fixture(scope="module")
def checks():
  return run_json("distributed_checks.py")


def _cases(checks, path):
  out = checks[path]
  errors = {k: v["error"] + "\n" + v.get("trace", "") for k, v in out.items() if "error" in v}
  assert not errors, errors
  return out


def test_every_registry_method_is_checked(checks):
  assert checks["methods"] == sorted(m.name for m in METHODS)
  for path in ("sharded_jit", "explicit", "pmap", "shard_map"):
    assert set(checks["methods"]) <= set(checks[path]), path


def test_sharded_jit_matches_one_device_and_keeps_sharding(checks):
  out = _cases(checks, "sharded_jit")
  devs = {k: v["max_dev"] for k, v in out.items()}
  assert max(devs.values()) <= TOL, devs
  for flag in ("sharding_kept", "state_sharding_kept", "init_from_sds"):
    assert [k for k, v in out.items() if not v[flag]] == [], flag


def test_explicit_sharding_state_types(checks):
  out = _cases(checks, "explicit")
  assert [k for k, v in out.items() if not v["update_types_match"]] == []
  assert [k for k, v in out.items() if not v["state_types_match"]] == []


def test_shard_map_with_axis_name_matches_unsharded_for_every_blocks_mode(checks):
  out = _cases(checks, "shard_map")
  controls = {k: v["max_dev"] for k, v in out.items() if "must deviate" in k}
  assert controls and min(controls.values()) > 1e-2, controls
  devs = {k: v["max_dev"] for k, v in out.items() if k not in controls}
  assert max(devs.values()) <= TOL, devs
  modes = {k.split("[")[1].rstrip("]") for k in out if "[" in k}
  assert {"leaf", "layer", "global", "unit", "callable"} <= modes, modes


def test_pmap_mean_gradient_matches_one_device(checks):
  out = _cases(checks, "pmap")
  devs = {k: v["max_dev"] for k, v in out.items()}
  assert max(devs.values()) <= TOL, devs
  assert max(v["device_spread"] for v in out.values()) == 0.0  # replicas agree


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_multiprocess_two_processes_match_single_process(tmp_path):
  import distributed_checks as dc

  out_path = tmp_path / "mp.json"
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, SCRIPT, "--multiprocess", str(i), "2", str(port), str(out_path)],
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
      )
      for i in range(2)
  ]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=300)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  if any(p.returncode for p in procs):
    log = "\n".join(l[-2000:] for l in logs)
    if "collectives" in log.lower() and "not" in log.lower() and "implemented" in log.lower():
      pytest.skip(f"CPU multi-process collectives unavailable: {log[-500:]}")
    pytest.fail(f"multi-process run failed:\n{log}")
  got = json.loads(out_path.read_text())
  assert got["processes"] == 2 and got["devices"] == 2 * dc.MP_LOCAL_DEVICES
  names = [n for n in dc.MP_METHODS if any(m.name == n for m in METHODS)]
  assert "adam_ng" in names
  for name in names:
    ref = jax.tree.map(np.asarray, dc.single_process_reference(name))
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: np.asarray(x, np.float32), got[name],
                     is_leaf=lambda x: isinstance(x, list)),
        ref, atol=TOL, rtol=TOL,
    )

"""benchmarks/flax_data_parallel.py --quick: pmap and sharded jit agree."""

import json
import pathlib
import subprocess
import sys

import pytest

import subproc

# A quick benchmark run: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = [pytest.mark.slow, pytest.mark.bench]

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "flax_data_parallel.py"


def test_quick_pmap_and_sharded_jit_match(tmp_path):
  # The check scripts' environment (their cheaper compiles, patient collectives);
  # the script adds its own 8-device XLA flag.
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, env=subproc.env(), timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "flax_data_parallel.json").read_text())
  hist = result["history"]
  assert result["config"]["quick"] and result["config"]["devices"] == 8
  assert len(hist) == result["config"]["epochs"] >= 2
  for row in hist:
    assert abs(row["loss_pmap"] - row["loss_jit"]) <= 1e-5 * max(1.0, row["loss_jit"])
    assert row["max_loss_diff"] <= 1e-5 and row["max_param_diff"] <= 1e-5
  assert hist[-1]["loss_jit"] < hist[0]["loss_jit"]  # it trains
  assert (tmp_path / "flax_data_parallel.png").stat().st_size > 0
  table = (tmp_path / "flax_data_parallel.md").read_text()
  assert table.count("\n| ") == len(hist) + 1  # header + one row per epoch
  assert "epoch 1" in proc.stdout or "epoch  1" in proc.stdout

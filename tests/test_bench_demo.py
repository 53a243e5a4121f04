"""The README demo (benchmarks/bng_mlp_digits.py): quick run and its JSON."""

import json
import math
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory, load_bench):
  mod = load_bench("bng_mlp_digits")
  out = tmp_path_factory.mktemp("demo")
  payload = mod.main(["--quick", "--quiet", "--out", str(out)])
  assert payload["config"]["steps"] == mod.QUICK["steps"]
  with open(out / "bng_mlp_digits.json") as f:
    return mod, out, json.load(f)


def test_quick_writes_json_table_and_plot(quick):
  mod, out, payload = quick
  cfg = payload["config"]
  assert payload["steps"] == list(range(0, cfg["steps"] + 1, cfg["eval_every"]))
  assert set(payload["results"]) == {str(d) for d in mod.QUICK["depths"]}
  for per_opt in payload["results"].values():
    assert list(per_opt) == list(mod.OPTIMIZERS)
    for res in per_opt.values():
      for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        arr = np.asarray(res[key])
        assert arr.shape == (cfg["seeds"], len(payload["steps"]))
        assert np.all(np.isfinite(arr))
  assert (out / "bng_mlp_digits.png").stat().st_size > 10_000
  table = (out / "bng_mlp_digits.md").read_text()
  for name in mod.OPTIMIZERS:
    assert f"| {name} |" in table


def test_quick_pairs_share_init_and_ng_trains(quick):
  _, _, payload = quick
  for per_opt in payload["results"].values():
    first = [np.asarray(r["train_loss"])[:, 0] for r in per_opt.values()]
    # Same seeds -> same initial parameters for every optimizer.
    for f in first[1:]:
      np.testing.assert_allclose(f, first[0], rtol=1e-6)
    # A fresh 10-class classifier starts near chance, ln(10).
    assert np.all(np.abs(first[0] - math.log(10)) < 0.5)
    for name in ("AdamNG", "SGDM-NG", "AdaGrad-NG"):
      loss = np.asarray(per_opt[name]["train_loss"])
      assert np.all(loss[:, -1] < loss[:, 0])


def test_committed_full_results_are_consistent(load_bench):
  path = ROOT / "benchmarks" / "results" / "bng_mlp_digits.json"
  if not path.exists():
    pytest.skip("full results not committed yet")
  payload = json.loads(path.read_text())
  cfg = payload["config"]
  assert cfg["depths"] == [6, 12, 18] and cfg["batch"] == 100
  assert cfg["width"] == 100
  # Produced on the benchmarks' one digits split, by a full (not quick) run.
  assert cfg["data"] == load_bench("_common").DIGITS_CONVENTION
  assert (cfg["n_train"], cfg["n_test"]) == (1437, 360)
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  for depth in ("6", "12", "18"):
    for res in payload["results"][depth].values():
      arr = np.asarray(res["train_loss"])
      assert arr.shape == (cfg["seeds"], n_points)
      assert np.all(np.isfinite(arr))

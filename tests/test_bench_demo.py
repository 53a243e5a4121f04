"""The README demo (benchmarks/bng_mlp_digits.py): tuning, claims, outputs."""

import json
import math
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bng_mlp_digits.json"


@pytest.fixture(scope="module")
def mod(load_bench):
  return load_bench("bng_mlp_digits")


@pytest.fixture(scope="module")
def common(load_bench):
  return load_bench("_common")


@pytest.fixture(scope="module")
def quick(tmp_path_factory, mod):
  out = tmp_path_factory.mktemp("demo")
  payload = mod.main(["--quick", "--quiet", "--out", str(out)])
  assert payload["config"]["steps"] == mod.QUICK["steps"]
  with open(out / "bng_mlp_digits.json") as f:
    return out, json.load(f)


def _inf(values):
  return np.array([math.inf if v is None else v for v in values], np.float64)


def check_tuning(mod, common, payload, grid_points):
  """Every (depth, method) has a tuning record that the protocol produced."""
  cfg = payload["config"]
  assert cfg["tuning_rule"] == common.TUNING_RULE
  assert cfg["verdict_rule"] == common.VERDICT_RULE
  for depth in cfg["depths"]:
    for name in mod.METHODS:
      t = payload["tuning"][f"{name}, depth {depth}"]
      assert (t["method"], t["group"]) == (name, f"depth {depth}")
      grid = t["grid"]
      assert grid == sorted(grid) and len(set(grid)) == len(grid)
      assert len(grid) == grid_points + t["widened"] >= grid_points
      # The grid of its centre, widened by sqrt(10) steps at an edge.
      assert set(common.log_grid(mod.CENTRES[name], grid_points)) <= set(grid)
      np.testing.assert_allclose(np.diff(np.log(grid)), math.log(10) / 2,
                                 atol=2e-3)
      assert t["seeds"] == list(common.SELECT_SEEDS)
      assert t["final_seeds"] == list(common.FINAL_SEEDS)
      val = np.array([_inf(row) for row in t["val_loss"]])
      assert val.shape == (len(grid), len(common.SELECT_SEEDS))
      # The smallest step size cannot diverge; the choice is the lowest mean.
      assert np.all(np.isfinite(val[0]))
      means = val.mean(1)
      np.testing.assert_allclose(_inf(t["mean_val_loss"]), means)
      best = int(np.argmin(means))
      assert t["chosen"] == grid[best]
      assert np.all(np.isfinite(val[best]))
      assert t["interior"] == (0 < best < len(grid) - 1)
      assert t["interior"] or t["widened"] == 3
      res = payload["results"][str(depth)][name]
      assert res["lr"] == t["chosen"]
      assert res["seeds"] == list(common.FINAL_SEEDS)


def check_results_and_claims(mod, common, payload):
  """Curves of the final seeds; claims recomputed from their per-seed finals."""
  cfg = payload["config"]
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  assert payload["steps"] == list(range(0, cfg["steps"] + 1, cfg["eval_every"]))
  n_seeds = len(common.FINAL_SEEDS)
  for depth in cfg["depths"]:
    per_opt = payload["results"][str(depth)]
    assert list(per_opt) == list(mod.METHODS)
    for res in per_opt.values():
      for key in common.CURVES:
        arr = np.asarray(res[key])
        assert arr.shape == (n_seeds, n_points)
        assert np.all(np.isfinite(arr))
        np.testing.assert_array_equal(res["final"][key], arr[:, -1])
  claims = payload["claims"]
  metrics = {"final train loss": "train_loss", "final test loss": "test_loss"}
  expected = {(f"depth {d}", f"{ng} beats {base}", m)
              for d in cfg["depths"] for base, ng in mod.PAIRS for m in metrics}
  assert {(c["group"], c["claim"], c["metric"]) for c in claims} == expected
  assert len(claims) == len(expected)
  for c in claims:
    ng, base = c["claim"].split(" beats ")
    per_opt = payload["results"][c["group"].split()[-1]]
    a = per_opt[ng]["final"][metrics[c["metric"]]]
    b = per_opt[base]["final"][metrics[c["metric"]]]
    mean, lo, hi = common.paired_ci(a, b)
    np.testing.assert_allclose([c["diff"], *c["ci"]], [mean, lo, hi])
    assert c["n"] == n_seeds and c["lower_is_better"] and c["paper"]
    assert c["ci"][0] <= c["diff"] <= c["ci"][1]
    # The verdict is the CI's side of zero (lower loss is better).
    lo, hi = c["ci"]
    assert (c["verdict"] == "holds") == (hi < 0)
    assert (c["verdict"] == "reversed") == (lo > 0)
    assert (c["verdict"] == "within noise") == (lo <= 0 <= hi)


def test_quick_tuning_records(quick, mod, common):
  _, payload = quick
  assert payload["config"]["mode"] == "quick"
  check_tuning(mod, common, payload, mod.QUICK["grid_points"])


def test_quick_results_and_claims(quick, mod, common):
  _, payload = quick
  check_results_and_claims(mod, common, payload)


def test_quick_writes_table_and_plot(quick, mod):
  out, payload = quick
  assert (out / "bng_mlp_digits.png").stat().st_size > 10_000
  table = (out / "bng_mlp_digits.md").read_text()
  assert "Shrunk run" in table
  for name in mod.METHODS:
    lr = payload["results"][str(mod.QUICK["depths"][0])][name]["lr"]
    assert f"| {name} | {lr:g} |" in table
  for c in payload["claims"]:
    assert f"| {c['claim']} | {c['metric']} |" in table


def test_quick_runs_are_paired_and_ng_trains(quick, mod):
  _, payload = quick
  for per_opt in payload["results"].values():
    first = [np.asarray(r["train_loss"])[:, 0] for r in per_opt.values()]
    # Same seed -> same initial parameters for every optimizer and step size.
    for f in first[1:]:
      np.testing.assert_allclose(f, first[0], rtol=1e-6)
    assert len(set(first[0].tolist())) == len(first[0])  # seeds differ
    # A fresh 10-class classifier starts near chance, ln(10).
    assert np.all(np.abs(first[0] - math.log(10)) < 0.5)
    for _, ng in mod.PAIRS:
      loss = np.asarray(per_opt[ng]["train_loss"])
      assert np.all(loss[:, -1] < loss[:, 0])


def test_modes_and_where_they_write(mod, common):
  _, mode, cfg, out = mod.configure([])
  assert mode == "demo" and cfg == mod.DEMO
  assert out != common.RESULTS_DIR and common.RESULTS_DIR not in out.parents
  _, mode, cfg, out = mod.configure(["--full"])
  assert mode == "full" and cfg == mod.FULL and out == common.RESULTS_DIR
  _, mode, _, out = mod.configure(["--full", "--steps", "10"])
  assert mode == "partial" and out != common.RESULTS_DIR
  for argv in ([], ["--quick"], ["--full", "--steps", "10"]):
    with pytest.raises(SystemExit):
      mod.configure(argv + ["--out", str(common.RESULTS_DIR)])
  with pytest.raises(SystemExit):
    mod.configure(["--full", "--quick"])
  # The demo is the full run shrunk, and says how.
  assert set(mod.DEMO["depths"]) < set(mod.FULL["depths"])
  assert mod.DEMO["steps"] <= mod.FULL["steps"]
  assert {k: v for k, v in mod.DEMO.items() if k not in ("depths", "steps")} == {
      k: v for k, v in mod.FULL.items() if k not in ("depths", "steps")}
  shrunk = mod.SHRUNK["demo"]
  assert f"depth {mod.DEMO['depths'][0]}" in shrunk
  assert f"{mod.DEMO['steps']} steps" in shrunk
  assert f"{mod.FULL['steps']} steps" in shrunk


def test_readme_demo_command_and_paragraph(mod):
  readme = (ROOT / "README.md").read_text()
  intro = readme[: readme.index("## Usage")]
  commands = re.findall(r"```bash\n(.*?)```", intro, re.S)
  demo = [l for c in commands for l in c.splitlines()
          if "bng_mlp_digits.py" in l and not l.startswith("#")]
  # Command 1 runs the demo: the script with no flags.
  assert len(demo) == 1 and demo[0].rstrip().endswith("benchmarks/bng_mlp_digits.py")
  # The paragraph says what the demo shrinks.
  text = " ".join(intro.split())
  assert f"depth {mod.DEMO['depths'][0]}" in text
  assert f"{mod.DEMO['steps']:,} steps" in text or f"{mod.DEMO['steps']} steps" in text
  assert "--full" in text


def test_committed_full_results(mod, common):
  if not RESULTS.exists():
    pytest.skip("full results not committed yet")
  payload = json.loads(RESULTS.read_text())
  cfg = payload["config"]
  assert cfg["mode"] == "full" and cfg["shrunk"] is None
  for key in ("depths", "steps", "eval_every", "batch", "width", "grid_points"):
    assert cfg[key] == (list(mod.FULL[key]) if key == "depths" else mod.FULL[key])
  assert cfg["grid_points"] >= 5
  assert cfg["grid_centres"] == mod.CENTRES
  # Produced on the benchmarks' one digits split.
  assert cfg["data"] == common.DIGITS_CONVENTION
  assert (cfg["n_train"], cfg["n_test"]) == (1437, 360)
  val = common.selection_split(
      common.load_digits(val_fraction=cfg["val_fraction"]))
  assert cfg["n_val"] == val.x_test.shape[0] < cfg["n_train"]
  check_tuning(mod, common, payload, cfg["grid_points"])
  check_results_and_claims(mod, common, payload)

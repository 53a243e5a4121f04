"""The README demo (benchmarks/bng_mlp_digits.py): tuning, claims, outputs.

The demo runs BNG's six optimizers; ``--quick`` and ``--full`` add the spectral
and sign forms (issue 18), whose tuning records and claims are checked here
too, and ``--merge`` joins a full run made in parts.
"""

import copy
import json
import math
import pathlib
import re

import numpy as np
import pytest

# A quick benchmark run: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = [pytest.mark.slow, pytest.mark.bench]

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
    for name in _methods(mod, payload):
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


def _methods(mod, payload):
  """The run's optimizers (a result from before the spectral and sign forms
  has BNG's six and no ``methods`` entry)."""
  return payload["config"].get("methods", list(mod.METHODS))


def check_results_and_claims(mod, common, payload):
  """Curves of the final seeds; claims recomputed from their per-seed finals."""
  cfg = payload["config"]
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  assert payload["steps"] == list(range(0, cfg["steps"] + 1, cfg["eval_every"]))
  n_seeds = len(common.FINAL_SEEDS)
  methods = _methods(mod, payload)
  for depth in cfg["depths"]:
    per_opt = payload["results"][str(depth)]
    assert list(per_opt) == methods
    for res in per_opt.values():
      for key in common.CURVES:
        arr = np.asarray(res[key])
        assert arr.shape == (n_seeds, n_points)
        assert np.all(np.isfinite(arr))
        np.testing.assert_array_equal(res["final"][key], arr[:, -1])
  claims = payload["claims"]
  metrics = {"final train loss": "train_loss", "final test loss": "test_loss"}
  pairs = mod.claim_pairs(methods)
  # BNG's three "NG beats plain"; with the other norms, each of the four
  # forms against its plain optimizer and against its NG form.
  assert len(pairs) == (3 + 8 if set(methods) == set(mod.ALL_METHODS) else 3)
  expected = {(f"depth {d}", f"{a} beats {b}", m, kind)
              for d in cfg["depths"] for kind, b, a, _ in pairs for m in metrics}
  assert {(c["group"], c["claim"], c["metric"], c.get("kind", "NG vs plain"))
          for c in claims} == expected
  assert len(claims) == len(expected)
  papers = {kind: paper for kind, _, paper in mod.KINDS}
  for c in claims:
    a_name, b_name = c["claim"].split(" beats ")
    per_opt = payload["results"][c["group"].split()[-1]]
    a = per_opt[a_name]["final"][metrics[c["metric"]]]
    b = per_opt[b_name]["final"][metrics[c["metric"]]]
    mean, lo, hi = common.paired_ci(a, b)
    np.testing.assert_allclose([c["diff"], *c["ci"]], [mean, lo, hi])
    assert c["n"] == n_seeds and c["lower_is_better"]
    assert c["paper"] == papers[c.get("kind", "NG vs plain")]
    assert c["ci"][0] <= c["diff"] <= c["ci"][1]
    # The verdict is the CI's side of zero (lower loss is better).
    lo, hi = c["ci"]
    assert (c["verdict"] == "holds") == (hi < 0)
    assert (c["verdict"] == "reversed") == (lo > 0)
    assert (c["verdict"] == "within noise") == (lo <= 0 <= hi)


def test_quick_tuning_records(quick, mod, common):
  _, payload = quick
  assert payload["config"]["mode"] == "quick"
  # Every optimizer, the spectral and sign forms included.
  assert payload["config"]["methods"] == list(mod.ALL_METHODS)
  assert set(mod.NORM_METHODS) == {"SGDM-spectral", "Adam-spectral",
                                   "SGDM-sign", "Adam-sign"}
  assert payload["config"]["grid_centres"] == mod.CENTRES
  assert "spectral, sign" in payload["config"]["optimizers"]
  check_tuning(mod, common, payload, mod.QUICK["grid_points"])


def test_quick_results_and_claims(quick, mod, common):
  _, payload = quick
  check_results_and_claims(mod, common, payload)


def test_quick_writes_table_and_plot(quick, mod):
  out, payload = quick
  assert (out / "bng_mlp_digits.png").stat().st_size > 10_000
  table = (out / "bng_mlp_digits.md").read_text()
  assert "Shrunk run" in table
  for name in mod.ALL_METHODS:
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
    for _, ng in mod.PAIRS + mod.NORM_PAIRS:
      loss = np.asarray(per_opt[ng]["train_loss"])
      assert np.all(loss[:, -1] < loss[:, 0])


def test_norm_forms_are_the_documented_chain(mod):
  """Each form is chain(block_normalize(leaf, norm), base): the same updates."""
  import jax
  import optax

  import normopt

  rng = np.random.default_rng(0)
  params = mod.init_mlp(rng, [8, 6, 5, 3])
  grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32),
                       params)
  bases = {"SGDM": optax.sgd(0.1, momentum=0.9), "Adam": optax.adam(0.1)}
  for name in mod.NORM_METHODS:
    base, norm = name.split("-")
    tx = mod.NORM_METHODS[name](0.1)
    want = optax.chain(normopt.block_normalize(blocks="leaf", norm=norm),
                       bases[base])
    got = tx.update(grads, tx.init(params), params)[0]
    ref = want.update(grads, want.init(params), params)[0]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6),
                 got, ref)
  # The gradient is normalized before the base optimizer: with SGD (no
  # momentum) the first sign step is -lr * sign(g).
  tx = optax.chain(normopt.block_normalize(blocks="leaf", norm="sign"),
                   optax.sgd(0.1))
  step = tx.update(grads, tx.init(params), params)[0]
  jax.tree.map(lambda s, g: np.testing.assert_allclose(s, -0.1 * np.sign(g)),
               step, grads)


def _parts(payload, groups):
  """``payload`` as one part per group of optimizers (as ``--methods`` runs
  would write it)."""
  parts = []
  for names in groups:
    part = copy.deepcopy(payload)
    part["config"]["methods"] = names
    part["config"]["grid_centres"] = {
        n: payload["config"]["grid_centres"][n] for n in names}
    part["results"] = {d: {n: r[n] for n in names}
                       for d, r in payload["results"].items()}
    part["tuning"] = {k: t for k, t in payload["tuning"].items()
                      if t["method"] in names}
    part["claims"] = []
    parts.append(part)
  return parts


def test_merge_of_parts_gives_the_whole(quick, mod):
  _, payload = quick
  groups = [list(mod.METHODS), ["SGDM-spectral", "Adam-sign"],
            ["Adam-spectral", "SGDM-sign"]]
  parts = _parts(payload, groups)
  # The BNG part as committed before the other norms: no "methods" entry.
  del parts[0]["config"]["methods"]
  merged, complete = mod.merge(parts[::-1])
  assert not complete  # quick parts never make a full result
  assert merged["results"] == payload["results"]
  assert list(merged["tuning"]) == list(payload["tuning"])
  assert merged["tuning"] == payload["tuning"]
  assert merged["claims"] == payload["claims"]
  assert merged["config"]["methods"] == list(mod.ALL_METHODS)
  assert [p["methods"] for p in merged["config"]["parts"]] == groups[::-1]
  full = _parts(payload, groups)
  for part in full:
    part["config"]["mode"] = "full"
  assert mod.merge(full)[1]
  assert not mod.merge(full[:2])[1]  # a missing optimizer: not complete
  with pytest.raises(ValueError, match="overlap"):
    mod.merge([full[0], full[0]])
  bad = _parts(payload, groups)
  bad[1]["config"]["steps"] += 1
  with pytest.raises(ValueError, match="steps"):
    mod.merge(bad)


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
  # A subset of the optimizers is a part: never into benchmarks/results/.
  _, mode, cfg, out = mod.configure(["--full", "--methods", "SGDM-sign"])
  assert mode == "full" and cfg["methods"] == ("SGDM-sign",)
  assert out != common.RESULTS_DIR and common.RESULTS_DIR not in out.parents
  assert mod.configure(["--merge", "a", "b"])[1] == "merge"
  # The demo is the full run shrunk, and says how; it runs BNG's six
  # optimizers, the full run adds the spectral and sign forms.
  assert set(mod.DEMO["depths"]) < set(mod.FULL["depths"])
  assert mod.DEMO["steps"] <= mod.FULL["steps"]
  assert mod.DEMO["methods"] == tuple(mod.METHODS)
  assert mod.FULL["methods"] == mod.QUICK["methods"] == tuple(mod.ALL_METHODS)
  shrunk_keys = ("depths", "steps", "methods")
  assert {k: v for k, v in mod.DEMO.items() if k not in shrunk_keys} == {
      k: v for k, v in mod.FULL.items() if k not in shrunk_keys}
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
  # Every optimizer, the spectral and sign forms included (merged from parts
  # of one configuration: --merge checked that and recomputed the claims).
  assert cfg["methods"] == list(mod.ALL_METHODS)
  assert cfg["grid_centres"] == mod.CENTRES
  if cfg.get("parts"):
    assert sorted(n for p in cfg["parts"] for n in p["methods"]) == sorted(mod.ALL_METHODS)
  # Produced on the benchmarks' one digits split.
  assert cfg["data"] == common.DIGITS_CONVENTION
  assert (cfg["n_train"], cfg["n_test"]) == (1437, 360)
  val = common.selection_split(
      common.load_digits(val_fraction=cfg["val_fraction"]))
  assert cfg["n_val"] == val.x_test.shape[0] < cfg["n_train"]
  check_tuning(mod, common, payload, cfg["grid_points"])
  check_results_and_claims(mod, common, payload)


def test_plot_title_names_only_the_curves_it_draws(mod):
  """The demo draws plain and NG forms only: its title promises no spectral
  (green) or sign (orange) curve; a run with them names them."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  def payload(names):
    res = {n: {"train_loss": [[1.0, 0.5]], "test_loss": [[1.1, 0.6]], "lr": 0.1}
           for n in names}
    return {"results": {"12": res}, "steps": [0, 10], "config": {"final_seeds": [0]}}

  fig = mod.plot(payload(["Adam", "AdamNG"]))
  title = fig._suptitle.get_text()
  plt.close(fig)
  assert "plain (blue), NG (red);" in title
  assert "green" not in title and "orange" not in title
  fig = mod.plot(payload(["SGDM", "SGDM-NG", "SGDM-spectral", "SGDM-sign"]))
  title = fig._suptitle.get_text()
  plt.close(fig)
  assert "spectral (green), sign (orange)" in title

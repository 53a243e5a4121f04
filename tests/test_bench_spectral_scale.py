"""benchmarks/spectral_scale.py keeps working: one --quick run, its JSON checked.

The quick run is a subprocess (it starts its own 4-device subprocess for the
sharded part, and fast XLA flags keep its compiles short). Timings are never
asserted (the CPU is shared); structure, ratios recomputed from the recorded
times, the sharded part's deviation and collective counts are, so are
issue 29's rows (the Muon family and the preconditioned Newton-Schulz, their
singular values against a NumPy reference), and the committed full result
must carry every target's fields.
"""

import json
import math
import pathlib
import statistics
import subprocess
import sys

import numpy as np
import pytest

from subproc import env as _env

# A quick benchmark run: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = [pytest.mark.slow, pytest.mark.bench]

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "spectral_scale.py"
COMMITTED = ROOT / "benchmarks" / "results" / "spectral_scale.json"
VARIANTS = ("grouped", "per_leaf", "optax")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("spectral_scale")
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--quick", "--quiet", "--out", str(out)],
      capture_output=True, text=True, env=_env(), timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads((out / "spectral_scale.json").read_text()), out


@pytest.fixture(scope="module")
def bench(load_bench):
  return load_bench("spectral_scale")


def test_structure_and_markdown(quick_run):
  data, out = quick_run
  meta = data["meta"]
  assert meta["quick"] and meta["complete"]
  got = {(r["tree"], r["layout"]) for r in data["results"]}
  assert got == {(t, lay) for t in ("kernels150", "gpt_small_cpu")
                 for lay in ("separate", "stacked")}
  for r in data["results"]:
    for v in VARIANTS:
      assert len(r["step_s"][v]) == meta["reps"]
      assert len(r["compile_s"][v]) == meta["compile_reps"]
      assert all(t > 0 and math.isfinite(t) for t in r["step_s"][v] + r["compile_s"][v])
    # Every variant ran the same steps: the same params up to roundoff.
    assert max(r["max_rel_dev_vs_optax_params"].values()) < 1e-4
  md = (out / "spectral_scale.md").read_text()
  assert "## Targets" in md and "--gpu" in md and "load average" in md


def test_ratios_come_from_recorded_times(quick_run, bench):
  data, _ = quick_run
  for r in data["results"]:
    for kind in ("step", "compile"):
      times = r[f"{kind}_s"]
      ratios = [a / b for a, b in zip(times["grouped"], times["optax"], strict=True)]
      assert r[f"{kind}_ratios"]["grouped/optax"] == pytest.approx(ratios)
      assert r[f"{kind}_ratio"] == pytest.approx(statistics.median(ratios))
      s = r[f"{kind}_ratio_stats"]["grouped/optax"]
      assert s["q25"] <= s["median"] <= s["q75"]
  # The summary follows the times: doubling optax's halves every ratio to it.
  r = data["results"][0]
  doubled = dict(r, step_s=dict(r["step_s"], optax=[2 * t for t in r["step_s"]["optax"]]))
  assert bench.summarize(doubled)["step_ratio"] == pytest.approx(r["step_ratio"] / 2)


def test_sharded_part(quick_run, bench):
  data, _ = quick_run
  sh = data["sharded"]
  cases = sh["cases"]
  ours = [k for k in cases if k.startswith("ours")]
  assert set(bench.TARGET_CASES) <= set(ours)
  for k in ours:
    row = cases[k]
    assert row["max_abs_dev_vs_unsharded"] < 1e-5, k
    assert isinstance(row["collectives"], int) and row["collectives"] <= 24, k
    assert 0 < row["flops_ratio"] < 1, k
    assert row["out_spec_matches_input"], k
  assert isinstance(cases["optax_auto"]["collectives"], int)
  # optax on the Explicit mesh: either an error recorded or a result.
  opt_ex = cases["optax_explicit_set_mesh"]
  assert "error" in opt_ex or "collectives" in opt_ex


def test_counts_collectives_once_per_async_pair(bench):
  hlo = ("  %a = f32[4] all-gather-start(f32[1] %x)\n"
         "  %b = f32[4] all-gather-done(%a)\n"
         "  %c = f32[4] all-reduce(f32[4] %b)\n"
         "  %d = f32[4] collective-permute(f32[4] %c)\n")
  assert bench.count_collectives(hlo) == {
      "all-gather": 1, "all-reduce": 1, "collective-permute": 1}


def test_committed_full_result_has_the_targets(bench):
  data = json.loads(COMMITTED.read_text())
  assert not data["meta"]["quick"] and data["meta"]["complete"]
  assert data["meta"]["loadavg_start"] is not None
  want = {(f"{tree}/{layout}", metric) for _, tree, layout, metric, _ in bench.TARGETS}
  want |= {(f"sharded/{case}", metric)
           for case in bench.TARGET_CASES
           for metric, _ in bench.SHARDED_TARGETS
           if metric != "explicit_max_dev" or "explicit" in case}
  got = {(t["what"], t["metric"]) for t in data["targets"]}
  assert want <= got, want - got
  for t in data["targets"]:
    assert {"issue", "ours", "optax", "value", "limit", "met"} <= set(t)
    assert t["met"] == (t["value"] <= t["limit"])
  # Issue 20's optax numbers from the same run: its collectives on the Auto mesh.
  assert data["sharded"]["cases"]["optax_auto"]["collectives"] > 24
  r = {(x["tree"], x["layout"]): x for x in data["results"]}[("kernels150", "separate")]
  assert r["n_matrices"] == 150 and r["shapes"] == ["(128, 128)"]


def test_gram_rows(quick_run):
  # The Gram form's table: both forms timed every repetition, the ratio is
  # the median of the recorded per-repetition ratios, and the two forms agree.
  data, out = quick_run
  rows = data["gram"]
  assert [r["shape"] for r in rows] == [[2, 32, 128], [2, 64, 64]]
  for r in rows:
    g, p = r["step_s"]["gram"], r["step_s"]["plain"]
    assert len(g) == len(p) == data["meta"]["reps"]
    assert r["ratio"] == pytest.approx(statistics.median(a / b for a, b in zip(g, p, strict=True)))
    assert r["max_abs_dev"] < 1e-4
  # Fewer FLOPs from an aspect ratio of about 2; more for a square matrix.
  assert rows[0]["flops_gram"] < rows[0]["flops_plain"]
  assert rows[1]["flops_gram"] > rows[1]["flops_plain"]
  assert "## Gram form" in (out / "spectral_scale.md").read_text()


# Issue 29: the Muon family and the preconditioned Newton-Schulz.
TREES = {(t, lay) for t in ("kernels150", "gpt_small_cpu") for lay in ("separate", "stacked")}
FAMILY = ("muon", "normuon", "adamuon")
NS = {"plain-5": (5, "frobenius"), "plain-4": (4, "frobenius"),
      "aol-4": (4, "aol"), "schatten-4": (4, "schatten")}
MUON_COEFFS = (3.4445, -4.7750, 2.0315)


def _check_against(rows, names, ref, meta):
  """Rows of one section: every tree, every variant timed every repetition,
  params finite, ratios to ``ref`` recomputed from the recorded times."""
  assert {(r["tree"], r["layout"]) for r in rows} == TREES
  for r in rows:
    assert r["reference"] == ref and tuple(r["step_s"]) == names
    for n in names:
      assert len(r["step_s"][n]) == meta["reps"]
      assert len(r["compile_s"][n]) == meta["issue29_compile_reps"]
      assert all(t > 0 and math.isfinite(t) for t in r["step_s"][n] + r["compile_s"][n])
      assert r["finite"][n], (r["tree"], r["layout"], n)
    assert set(r["step_ratio_stats"]) == {f"{n}/{ref}" for n in names if n != ref}
    for n in names:
      if n == ref:
        continue
      ratios = [a / b for a, b in zip(r["step_s"][n], r["step_s"][ref], strict=True)]
      assert r["step_ratios"][f"{n}/{ref}"] == pytest.approx(ratios)
      s = r["step_ratio_stats"][f"{n}/{ref}"]
      assert s["median"] == pytest.approx(statistics.median(ratios))
      assert 0 < s["q25"] <= s["median"] <= s["q75"] < math.inf


def test_muon_family_rows(quick_run):
  data, out = quick_run
  rows = data["muon_family"]
  _check_against(rows, FAMILY, "muon", data["meta"])
  # Issue 29's targets: both methods on every tree, met iff value <= limit,
  # the value the row's median ratio.
  by = {(r["tree"], r["layout"]): r for r in rows}
  got = {(t["what"], t["metric"]): t for t in data["targets"] if t["issue"] == 29}
  want = {(f"muon_family/{tree}/{layout}", f"{m}/muon step_ratio")
          for tree, layout in TREES for m in FAMILY[1:]}
  assert set(got) == want
  for (what, metric), t in got.items():
    r = by[tuple(what.split("/")[1:])]
    m = metric.split("/")[0]
    assert t["value"] == r["step_ratio_stats"][f"{m}/muon"]["median"]
    assert t["ours"] == r["step_median_s"][m] and t["base"] == r["step_median_s"]["muon"]
    assert t["limit"] == 1.10 and t["met"] == (t["value"] <= t["limit"])
  md = (out / "spectral_scale.md").read_text()
  assert "## Muon family step" in md and "normuon/muon" in md


def test_preconditioned_step_rows(quick_run, bench):
  data, out = quick_run
  assert bench.NS_VARIANTS == NS
  _check_against(data["preconditioned"]["step"], tuple(NS), "plain-5", data["meta"])
  assert "## Preconditioned Newton-Schulz" in (out / "spectral_scale.md").read_text()


def _numpy_polar(x, steps, preconditioning):
  """A float64 NumPy Newton-Schulz with Muon's coefficients (wide X)."""
  x = x / np.linalg.norm(x)
  if preconditioning == "aol":
    x = x / np.sqrt(np.abs(x @ x.T).sum(axis=1, keepdims=True))
  elif preconditioning == "schatten":
    x = x / np.sqrt(np.linalg.norm(x @ x.T))
  a, b, c = MUON_COEFFS
  for _ in range(steps):
    g = x @ x.T
    x = a * x + (b * g + c * g @ g) @ x
  return x


def test_sigma_table(quick_run):
  # The singular values the table reports are those of a float64 NumPy
  # Newton-Schulz on the same matrices; and what the preconditioned first
  # step buys on the ill-conditioned square matrix: 4 steps of aol (and
  # schatten) orthogonalize better than 4 plain ones, as 5 plain ones do.
  data, _ = quick_run
  rows = data["preconditioned"]["sigma"]
  assert [r["shape"] for r in rows] == [[128, 128], [256, 1024]]
  rng = np.random.default_rng(0)
  for r in rows:
    m, n = r["shape"]
    x = rng.standard_normal((1, m, n), dtype=np.float32)[0].astype(np.float64)
    s_x = np.linalg.svd(x, compute_uv=False)
    assert r["condition_number"] == pytest.approx(s_x[0] / s_x[-1], rel=1e-6)
    assert set(r["variants"]) == set(NS)
    for name, (k, pre) in NS.items():
      v = r["variants"][name]
      assert (v["ns_steps"], v["preconditioning"]) == (k, pre)
      s = np.linalg.svd(_numpy_polar(x, k, pre), compute_uv=False)
      assert v["sigma_min"] == pytest.approx(s[-1], rel=1e-3, abs=1e-4), (m, n, name)
      assert v["sigma_max"] == pytest.approx(s[0], rel=1e-3, abs=1e-4), (m, n, name)
      assert v["max_abs_dev"] == pytest.approx(np.max(np.abs(s - 1)), rel=1e-3, abs=1e-4)
      assert v["mean_abs_dev"] == pytest.approx(np.mean(np.abs(s - 1)), rel=1e-3, abs=1e-4)
      assert v["max_abs_dev"] == pytest.approx(max(1 - v["sigma_min"], v["sigma_max"] - 1))
  sq = {k: v["max_abs_dev"] for k, v in rows[0]["variants"].items()}
  assert sq["plain-5"] < sq["plain-4"]
  assert sq["aol-4"] < sq["plain-4"]
  assert sq["schatten-4"] < sq["plain-4"]
  # The well-conditioned 256x1024: every variant has reached Muon's band.
  assert max(v["max_abs_dev"] for v in rows[1]["variants"].values()) < 0.35

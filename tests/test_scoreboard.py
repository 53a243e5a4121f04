"""The claims scoreboard (benchmarks/scoreboard.py) and the committed results it reads.

Every committed reproduction result must follow the one tuning protocol and the
one verdict rule of ``benchmarks/_common.py``; README's "Results" section must
hold the scoreboard those files give today.
"""

import json
import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def sb(load_bench):
  return load_bench("scoreboard")


@pytest.fixture(scope="module")
def common(load_bench):
  return load_bench("_common")


def _committed(sb):
  return {n: data for n in sb.BENCHMARKS if (data := sb.load(n)) is not None}


def test_readme_holds_the_current_scoreboard(sb):
  text = sb.README.read_text(encoding="utf-8")
  assert sb.readme_block(text) == sb.scoreboard(), (
      "README's scoreboard is stale: run python benchmarks/scoreboard.py --readme")


def test_committed_claims_follow_the_verdict_rule(sb, common):
  committed = _committed(sb)
  assert set(committed) == set(sb.BENCHMARKS), "a reproduction result is missing"
  for name, data in committed.items():
    records = sb.claims(data)
    assert records, f"{name}: no claims judged by the verdict rule"
    assert data["config"]["verdict_rule"] == common.VERDICT_RULE, name
    for c in records:
      lo, hi = c["ci"]
      assert lo <= c["diff"] <= hi, (name, c["claim"])
      assert c["n"] == len(common.FINAL_SEEDS), (name, c["claim"])
      side = -1 if c["lower_is_better"] else 1  # the paper's direction
      ends = (side * lo, side * hi)
      want = ("holds" if min(ends) > 0 else "reversed" if max(ends) < 0
              else "within noise")
      assert c["verdict"] == want, (name, c["claim"], c["ci"])


def test_committed_tuning_follows_the_protocol(sb, common):
  for name, data in _committed(sb).items():
    assert data["config"]["tuning_rule"] == common.TUNING_RULE, name
    records = list(sb.tuning(data))
    assert records, f"{name}: no tuning records"
    for label, r in records:
      where = f"{name}: {label}"
      if r.get("untuned"):
        # Run at another method's chosen step size (norms_lm's Moonlight claim):
        # no grid of its own, and that step size is the other method's choice.
        src = next(t for lab, t in records if lab.split(": ")[-1] == r["lr_from"])
        assert r["chosen"] == src["chosen"] and not r["grid"], where
        continue
      grid = r["grid"]
      assert len(grid) >= 5 and grid == sorted(grid), where
      # Neighbours about sqrt(10) apart (4 significant digits kept).
      np.testing.assert_allclose(np.diff(np.log10(grid)), 0.5, atol=2e-3, err_msg=where)
      means = [math.inf if m is None else m for m in r["mean_val_loss"]]
      assert r["chosen"] == grid[int(np.argmin(means))], where
      assert r["interior"] or r["widened"] == 3, where
      assert r["interior"] == (0 < grid.index(r["chosen"]) < len(grid) - 1), where
      assert len(r["seeds"]) == len(common.SELECT_SEEDS), where
      final = r.get("final_seeds", common.FINAL_SEEDS)
      assert len(final) == len(common.FINAL_SEEDS), where
      assert not set(final) & set(r["seeds"]), f"{where}: final seeds are not fresh"


def test_scoreboard_renders_claims_counts_and_step_sizes(sb, tmp_path):
  rec = lambda v, lo, hi, **kw: dict(claim=f"A{v} beats B", metric="test error", diff=(lo + hi) / 2,
                                     ci=[lo, hi], n=5, lower_is_better=True, verdict=v, **kw)
  long = "Fig. 1: the block-normalized forms train where the plain ones stall"
  data = {"claims": [rec("holds", -0.3, -0.1, paper="Table 1: 4.7% vs 5.0%", group="depth 6"),
                     rec("within noise", -0.1, 0.2, paper=long),
                     rec("reversed", 0.05, 0.15, paper=long),
                     {"claim": "old schema", "diff": 1.0, "se": 0.1}],
          "tuning": {"depth 6": {"Adam": {"chosen": 0.001, "interior": True}},
                     "SGD": {"chosen": 0.3, "interior": False}}}
  (tmp_path / "bng_cnn.json").write_text(json.dumps(data))
  text = sb.scoreboard(tmp_path)
  assert text.startswith("**3 claims: 1 hold, 1 are within noise, 1 are reversed.**")
  assert "`benchmarks/bng_mlp_digits.py`: no judged claims" in text
  assert ("| Aholds beats B | depth 6, test error | Table 1: 4.7% vs 5.0% "
          "| -0.20 [-0.30, -0.10] | **holds** |") in text
  assert "| Areversed beats B | test error | [1] | +0.100 [+0.050, +0.150] | **reversed** |" in text
  assert text.count(long) == 1 and f"[1] {long}" in text  # cited, written once
  assert "old schema" not in text
  assert "Tuned step sizes: depth 6 Adam 0.001; SGD 0.3*." in text
  readme = tmp_path / "README.md"
  readme.write_text(f"# x\n\n{sb.START}\nstale\n{sb.END}\n\nrest\n")
  sb.write_readme(tmp_path, readme)
  assert sb.readme_block(readme.read_text()) == text
  assert readme.read_text().endswith(f"{sb.END}\n\nrest\n")
  with pytest.raises(ValueError, match="markers"):
    sb.readme_block("no markers")

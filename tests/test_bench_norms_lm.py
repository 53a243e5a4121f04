"""benchmarks/norms_lm.py: quick run, layouts, tuning records, paired seeds, claims,
merge, JSON."""

import json
import pathlib

import jax
import numpy as np
import pytest

# A quick benchmark run: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = [pytest.mark.slow, pytest.mark.bench]

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "norms_lm.json"


@pytest.fixture(scope="module")
def quick(tmp_path_factory, load_bench):
  mod = load_bench("norms_lm")
  out = tmp_path_factory.mktemp("norms_lm")
  mod.main(["--quick", "--quiet", "--out", str(out)])
  with open(out / "norms_lm.json") as f:
    return mod, out, json.load(f)


@pytest.fixture(scope="module")
def quick_new(tmp_path_factory, load_bench):
  """A quick run of AdamW and the RMS-0.2 Muon, tuned and at AdamW's lr."""
  mod = load_bench("norms_lm")
  out = tmp_path_factory.mktemp("norms_lm_new")
  mod.main(["--quick", "--quiet", "--out", str(out), "--methods", "adamw",
            "muon (rms 0.2)", "muon (rms 0.2) @ adamw"])
  with open(out / "norms_lm.json") as f:
    return mod, out, json.load(f)


def _check_tuning(payload, common, committed):
  cfg = payload["config"]
  assert cfg["tuning_rule"] == common.TUNING_RULE
  assert cfg["verdict_rule"] == common.VERDICT_RULE
  assert list(payload["tuning"]) == cfg["methods"]
  for name, rec in payload["tuning"].items():
    if rec.get("untuned"):
      # Final seeds only, at the chosen lr of a method of the same run.
      source = rec["lr_from"]
      assert source in cfg["methods"][:cfg["methods"].index(name)]
      assert rec["chosen"] == payload["tuning"][source]["chosen"]
      assert rec["grid"] == rec["val_loss"] == rec["seeds"] == []
      assert "interior" not in rec  # the scoreboard: no edge mark
      assert rec["final_seeds"] == list(common.FINAL_SEEDS)
      assert payload["selection_curves"][name] == {}
      continue
    grid = rec["grid"]
    assert len(grid) >= (5 if committed else 2) and grid == sorted(grid)
    assert rec["seeds"] == list(common.SELECT_SEEDS)
    assert rec["final_seeds"] == list(common.FINAL_SEEDS)
    assert np.asarray(rec["val_loss"], float).shape == (len(grid), 2)
    means = [np.inf if v is None else v for v in rec["mean_val_loss"]]
    assert grid[int(np.argmin(means))] == rec["chosen"]
    assert rec["interior"] == (0 < grid.index(rec["chosen"]) < len(grid) - 1)
    assert rec["interior"] or rec["widened"] == 3, name
    np.testing.assert_allclose(np.diff(np.log10(grid)), 0.5, atol=2e-3)
    # The selection curves end at the recorded selection losses.
    sel = payload["selection_curves"][name]
    assert set(sel) == {f"{lr:g}" for lr in grid}
    for lr, row in zip(grid, rec["val_loss"], strict=True):
      last = np.asarray(sel[f"{lr:g}"]["val_loss"])[:, -1]
      np.testing.assert_allclose(last, np.asarray(row, float))


def _check_claims(payload, common):
  final = payload["final"]
  assert payload["claims"]
  for c in payload["claims"]:
    a, b = final[c["method_a"]], final[c["method_b"]]
    assert len(a["val_loss"]) == len(b["val_loss"]) == c["n"] == len(
        common.FINAL_SEEDS)
    mean, lo, hi = common.paired_ci(a["val_loss"], b["val_loss"])
    assert c["diff"] == pytest.approx(mean)
    assert c["ci"] == pytest.approx([lo, hi])
    assert c["lower_is_better"]
    assert c["verdict"] == ("holds" if hi < 0 else "reversed" if lo > 0
                            else "within noise")
    t_mean, t_lo, t_hi = common.paired_ci(a["train_loss"], b["train_loss"])
    assert c["train_diff"] == pytest.approx(t_mean)
    assert c["train_ci"] == pytest.approx([t_lo, t_hi])
    d = np.asarray(a["val_loss"]) - np.asarray(b["val_loss"])
    assert c["max_abs_seed_diff"] == pytest.approx(np.abs(d).max())
    assert c["paper"]
  # The final values are the last point of the reported curves.
  for name, r in payload["results"].items():
    for key in ("train_loss", "val_loss"):
      np.testing.assert_allclose(np.asarray(r[key])[:, -1], final[name][key])


def test_quick_writes_json_table_and_plot(quick, load_bench):
  mod, out, payload = quick
  cfg = payload["config"]
  assert cfg["methods"] == list(mod.QUICK_METHODS)
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  assert payload["steps"] == list(range(0, cfg["steps"] + 1, cfg["eval_every"]))
  for res in payload["results"].values():
    for key in ("train_loss", "val_loss"):
      arr = np.asarray(res[key])
      assert arr.shape == (len(cfg["final_seeds"]), n_points)
      assert np.all(np.isfinite(arr))
  assert (out / "norms_lm.png").stat().st_size > 10_000
  md = (out / "norms_lm.md").read_text()
  assert "| muon (layer) |" in md and "| muon (shape rule) |" in md
  assert "| verdict |" in md
  # The layouts table of the benchmark's model, printed in the page and
  # saved in the JSON, and the per-view matrices of the attention kernels.
  assert payload["config"]["layouts"]["layer"] in md
  _check_layouts_record(mod, payload["config"])
  for row in payload["config"]["layouts"]["hidden_matrices"].values():
    assert f"| {row['shape rule']} | {row['layer']} | {row['per head']} |" in md
  _check_tuning(payload, load_bench("_common"), committed=False)


def _check_layouts_record(mod, cfg):
  """The saved layouts: q/k/v d → H·hd (layer), H matrices d → hd (per
  head), (d·H) → hd under the shape rule; the MLP kernels alike in all."""
  L, d, H = cfg["layers"], cfg["d_model"], cfg["heads"]
  hd = d // H
  rec = cfg["layouts"]
  views = rec["hidden_matrices"]
  assert set(views) == {f"layers/attn/{n}/kernel" for n in
                        ("query", "key", "value", "out")} | {
                            "layers/mlp_in/kernel", "layers/mlp_out/kernel"}
  for n in ("query", "key", "value"):
    v = views[f"layers/attn/{n}/kernel"]
    assert v["shape"] == [L, d, H, hd]
    assert v["layer"] == f"{L} × {d} × {H * hd}"
    assert v["per head"] == f"{L * H} × {d} × {hd}"
    assert v["shape rule"] == f"{L} × {d * H} × {hd}" != v["layer"]
  out = views["layers/attn/out/kernel"]
  assert out["layer"] == out["shape rule"] == f"{L} × {H * hd} × {d}"
  assert out["per head"] == f"{L * H} × {hd} × {d}"
  for n, (m, k) in (("mlp_in", (d, 4 * d)), ("mlp_out", (4 * d, d))):
    v = views[f"layers/{n}/kernel"]
    assert v["layer"] == v["per head"] == v["shape rule"] == f"{L} × {m} × {k}"
  # The tables as normopt prints them, for this model and config.
  model = mod.make_model(cfg, cfg["vocab"])
  assert rec["layer"] == str(mod.model_layouts(model, cfg))
  assert rec["per_head"] == str(mod.model_layouts(model, cfg, attention="head"))
  rows = {r.split()[0]: r for r in rec["layer"].splitlines()[2:]}
  assert "pos/embedding" in rows and " embedding " in rows["pos/embedding"]
  assert " head " in rows["head/kernel"]
  assert f"{L} × {d} × {H * hd}" in rows["layers/attn/query/kernel"]
  assert " bias " in rows["layers/attn/query/bias"]
  assert f"{L * H} × {d} × {hd}" in rec["per_head"]


def test_quick_claims_follow_the_verdict_rule(quick, load_bench):
  _, _, payload = quick
  _check_claims(payload, load_bench("_common"))
  assert [c["claim"] for c in payload["claims"]] == [quick[0].CLAIMS[0][0]]
  c = payload["claims"][0]
  assert (c["method_a"], c["method_b"]) == ("muon (layer)", "muon (shape rule)")


def test_quick_runs_are_paired(quick):
  """Seed i: the same start for every method and every step size."""
  _, _, payload = quick
  first = [np.asarray(r["val_loss"])[:, 0] for r in payload["results"].values()]
  for f in first[1:]:
    np.testing.assert_allclose(f, first[0], rtol=1e-6)
  starts = [np.asarray(c["val_loss"])[:, 0]
            for sel in payload["selection_curves"].values() for c in sel.values()]
  for s in starts[1:]:
    np.testing.assert_allclose(s, starts[0], rtol=1e-6)


def test_merge_of_parts_is_the_whole(quick):
  mod, _, payload = quick
  names = payload["config"]["methods"]
  parts = []
  for subset in (names[:1], names[1:]):
    part = dict(payload, config=dict(payload["config"], methods=subset))
    for key in ("tuning", "selection_curves", "results", "final", "method_seconds"):
      part[key] = {n: payload[key][n] for n in subset}
    part["claims"] = mod.make_claims(part["final"])
    parts.append(part)
  merged, complete = mod.merge(parts[::-1])
  assert not complete  # a quick run's methods, not all of them
  assert merged["config"]["methods"] == names
  assert merged["final"] == payload["final"]
  assert merged["claims"] == payload["claims"]
  bad = dict(parts[1], config=dict(parts[1]["config"], steps=1))
  with pytest.raises(ValueError, match="steps"):
    mod.merge([parts[0], bad])


def test_quick_untuned_method_runs_at_adamws_choice(quick, quick_new, load_bench):
  mod, out, payload = quick_new
  common = load_bench("_common")
  cfg = payload["config"]
  assert cfg["methods"] == ["adamw", "muon (rms 0.2)", "muon (rms 0.2) @ adamw"]
  _check_tuning(payload, common, committed=False)
  _check_claims(payload, common)
  tun = payload["tuning"]
  assert tun["muon (rms 0.2) @ adamw"]["lr_from"] == "adamw"
  assert tun["muon (rms 0.2) @ adamw"]["chosen"] == tun["adamw"]["chosen"]
  # The untuned run is the tuned one's optimizer: where both chose the same
  # lr, the seeds' curves agree; otherwise its curves are its own.
  same = tun["muon (rms 0.2)"]["chosen"] == tun["adamw"]["chosen"]
  a, b = (np.asarray(payload["results"][n]["val_loss"])
          for n in ("muon (rms 0.2)", "muon (rms 0.2) @ adamw"))
  assert np.allclose(a, b, rtol=1e-6) == same
  assert cfg["muon_family"]["weight_decay"] == mod.WD == 0.1
  assert [(c["method_a"], c["method_b"]) for c in payload["claims"]] == [
      ("muon (rms 0.2)", "adamw"), ("muon (rms 0.2) @ adamw", "adamw")]
  md = (out / "norms_lm.md").read_text()
  assert "| muon (rms 0.2) @ adamw |" in md and "adamw's chosen lr, untuned" in md
  # Paired with the other part: the same first losses (seeds, data, windows).
  np.testing.assert_allclose(
      np.asarray(payload["results"]["adamw"]["val_loss"])[:, 0],
      np.asarray(quick[2]["results"]["muon (layer)"]["val_loss"])[:, 0], rtol=1e-6)

  # The untuned method needs its source in the same run / part.
  with pytest.raises(SystemExit):
    mod.main(["--quick", "--quiet", "--out", str(out / "x"), "--methods",
              "muon (rms 0.2) @ adamw"])
  split = []
  for subset in (["adamw"], ["muon (rms 0.2)", "muon (rms 0.2) @ adamw"]):
    part = dict(payload, config=dict(cfg, methods=subset))
    for key in ("tuning", "selection_curves", "results", "final", "method_seconds"):
      part[key] = {n: payload[key][n] for n in subset}
    split.append(part)
  with pytest.raises(ValueError, match="same part"):
    mod.merge(split)
  moved = dict(payload, tuning=dict(tun, **{"muon (rms 0.2) @ adamw": dict(
      tun["muon (rms 0.2) @ adamw"], chosen=tun["adamw"]["chosen"] * 2)}))
  with pytest.raises(ValueError, match="chosen lr"):
    mod.merge([moved])


def test_merge_with_a_part_from_before_the_muon_family(quick, quick_new):
  """The committed six methods ran before issue 29's keys existed: a part
  without any new method may lack them; one with a new method may not."""
  mod, _, old = quick
  new = quick_new[2]
  cfg = {k: v for k, v in old["config"].items() if k != "muon_family"}
  cfg["grid_centers"] = {m: c for m, c in cfg["grid_centers"].items()
                         if m not in mod.NEW_METHODS}
  before = dict(old, config=cfg)
  merged, complete = mod.merge([before, new])
  assert not complete
  assert merged["config"]["methods"] == [
      m for m in mod.METHODS if m in old["config"]["methods"] + new["config"]["methods"]]
  assert merged["config"]["muon_family"] == new["config"]["muon_family"]
  assert merged["config"]["grid_centers"] == {
      m: mod.GRID_CENTERS[m] for m in mod.METHODS if m in mod.GRID_CENTERS}
  assert [p["methods"] for p in merged["parts"]] == [
      old["config"]["methods"], new["config"]["methods"]]
  assert merged["final"]["adamw"] == new["final"]["adamw"]
  assert merged["final"]["muon (layer)"] == old["final"]["muon (layer)"]
  # Wall: the union of the parts' spans.
  spans = sorted((p["started"], p["ended"]) for p in (old, new))
  union = (max(b for _, b in spans) - spans[0][0] if spans[1][0] <= spans[0][1]
           else sum(b - a for a, b in spans))
  assert merged["elapsed_s"] == pytest.approx(union)
  # A part that ran a new method without its config, or a grid centre that
  # disagrees, or another config difference: refused.
  lacking = dict(new, config={k: v for k, v in new["config"].items()
                              if k != "muon_family"})
  with pytest.raises(ValueError, match="muon_family"):
    mod.merge([old, lacking])
  centres = dict(new["config"]["grid_centers"], **{"muon (layer)": 0.03})
  with pytest.raises(ValueError, match="grid_centers"):
    mod.merge([before, dict(new, config=dict(new["config"], grid_centers=centres))])
  with pytest.raises(ValueError, match="adam_lr_ratio"):
    mod.merge([before, dict(new, config=dict(new["config"], adam_lr_ratio=1.0))])


def _names(path):
  return "/".join(k.key for k in path)


def test_layouts_and_optimizers_of_the_model(load_bench):
  import optax

  import normopt

  mod = load_bench("norms_lm")
  cfg = dict(mod.QUICK)
  L, d, H = cfg["layers"], cfg["d_model"], cfg["heads"]
  hd = d // H
  model = mod.make_model(cfg, 20)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), mod.example_tokens(cfg))["params"])
  flat = {_names(p): (p, x) for p, x in jax.tree_util.tree_leaves_with_path(shapes)}
  assert flat["layers/attn/query/kernel"][1].shape == (L, d, H, hd)
  assert flat["layers/attn/out/kernel"][1].shape == (L, H, hd, d)
  assert flat["pos/embedding"][1].shape == (cfg["context"], d)
  layer = mod.model_layouts(model, cfg)
  per_head = mod.model_layouts(model, cfg, attention="head")
  kinds = {k: layer(*flat[k]).kind for k in flat}
  assert kinds["embed/embedding"] == kinds["pos/embedding"] == "embedding"
  assert kinds["head/kernel"] == "head"
  assert kinds["layers/attn/query/bias"] == kinds["head/bias"] == "bias"
  assert kinds["layers/ln_attn/scale"] == "norm"
  hidden = {k for k, v in kinds.items() if v == "hidden"}
  assert hidden == {k for k in flat if k.startswith("layers/") and k.endswith("/kernel")}
  assert not layer.unknown()
  for n in ("query", "key", "value"):
    p, x = flat[f"layers/attn/{n}/kernel"]
    lay = layer(p, x)
    assert (lay.batch, lay.reduction, lay.output, lay.stacked) == ((0,), (1,), (2, 3), 1)
    assert lay.matrix_shape(x.shape) == (L, d, H * hd)
    assert per_head(p, x).matrix_shape(x.shape) == (L * H, d, hd)
    rule = mod.shape_rule_layout(p, x)
    assert rule.matrix_shape(x.shape) == (L, d * H, hd)
    assert (rule.reduction, rule.output) != (lay.reduction, lay.output)
  p, x = flat["layers/attn/out/kernel"]
  assert per_head(p, x).matrix_shape(x.shape) == (L * H, hd, d)
  assert mod.shape_rule_layout(p, x).matrix_shape(x.shape) == layer(p, x).matrix_shape(
      x.shape) == (L, H * hd, d)
  # The shape rule's Muon/Adam split is the others': no matrix off the blocks.
  assert {k for k in flat if mod.shape_rule_layout(*flat[k]) is not None} == hidden
  dims = layer.dimension_numbers(shapes)
  assert dims["layers"]["attn"]["query"]["kernel"] == optax.contrib.MuonDimensionNumbers(
      (1,), (2, 3))
  assert dims["layers"]["mlp_in"]["kernel"] == optax.contrib.MuonDimensionNumbers((1,), (2,))
  assert dims["embed"]["embedding"] is None and dims["head"]["kernel"] is None
  assert dims["pos"]["embedding"] is None and dims["layers"]["attn"]["query"]["bias"] is None
  radius = mod.scion_radius(shapes)
  assert radius["head"]["kernel"] == mod.SCION_RADIUS_HEAD
  assert radius["head"]["bias"] == radius["layers"]["attn"]["query"][
      "kernel"] == mod.SCION_RADIUS_HIDDEN

  # One step of each optimizer as the benchmark builds it.
  rng = np.random.default_rng(0)
  params, grads = (jax.tree.map(
      lambda x: rng.standard_normal(x.shape).astype(np.float32), shapes)
      for _ in range(2))
  opts = mod.make_optimizers(shapes, model, cfg)
  assert set(opts) == set(mod.METHODS)

  def step(tx):
    return {_names(p): np.asarray(u) for p, u in jax.tree_util.tree_leaves_with_path(
        jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params))}

  steps = {name: step(opts[name](0.02)) for name in mod.MUONS}
  # normopt's Muon (layer view) is optax's with the layouts' dimension numbers.
  for k, u in steps["muon (layer)"].items():
    np.testing.assert_allclose(u, steps["muon (optax)"][k], atol=1e-6, err_msg=k)
  # The views differ exactly where their matrices do.
  qkv = {f"layers/attn/{n}/kernel" for n in ("query", "key", "value")}
  for other, differ in (("muon (shape rule)", qkv),
                        ("muon (per head)", qkv | {"layers/attn/out/kernel"})):
    for k, u in steps[other].items():
      gap = np.abs(u - steps["muon (layer)"][k]).max()
      assert (gap > 1e-3) if k in differ else (gap < 1e-6), (other, k, gap)
  # Each view's q step is Muon's step on its own matrix of the gradient:
  # layer (d, H·hd), shape rule (d·H, hd), per head each (d, hd).
  g = grads["layers"]["attn"]["query"]["kernel"][0]  # layer 0: (d, H, hd)

  def alone(m):
    tx = normopt.muon(0.02)
    return np.asarray(jax.jit(lambda m: tx.update(m, tx.init(m), m)[0])(m))

  q = {name: steps[name]["layers/attn/query/kernel"][0] for name in mod.MUONS}
  np.testing.assert_allclose(q["muon (layer)"].reshape(d, H * hd),
                             alone(g.reshape(d, H * hd)), atol=1e-6)
  np.testing.assert_allclose(q["muon (shape rule)"].reshape(d * H, hd),
                             alone(g.reshape(d * H, hd)), atol=1e-6)
  for h in range(H):
    np.testing.assert_allclose(q["muon (per head)"][:, h], alone(g[:, h]),
                               atol=1e-6)
  # Scion's "auto" picks the norms from the roles: the explicit per-role norms
  # give the same step.
  by_kind = {"hidden": "spectral", "embedding": "col", "head": "sign",
             "norm": "bias_rms", "bias": "bias_rms"}
  explicit = normopt.scion(
      0.02, mod.SCION_MOMENTUM, layout=layer, radius=mod.scion_radius(shapes),
      norms=lambda p, x: by_kind[layer(p, x).kind])
  auto = step(opts["scion (roles)"](0.02))
  for k, u in step(explicit).items():
    np.testing.assert_allclose(auto[k], u, atol=1e-6, err_msg=k)
  head = auto["head/kernel"]
  np.testing.assert_allclose(np.abs(head), np.abs(head).max(), rtol=1e-5)  # sign

  # Issue 29's methods, one step at lr 0.01.
  lr = 0.01
  fam = {name: step(opts[name](lr)) for name in
         ("muon (layer)", "adamw", "normuon", "adamuon", "muon (rms 0.2)",
          "muon (rms 0.2) @ adamw")}
  g = {_names(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(grads)}
  w = {_names(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
  assert mod.WD == 0.1 and mod.CONSISTENT_RMS == 0.2
  for k, u in step(optax.adamw(lr, weight_decay=0.1)).items():
    np.testing.assert_allclose(fam["adamw"][k], u, atol=1e-7, err_msg=k)
  for k, u in fam["muon (rms 0.2)"].items():
    np.testing.assert_array_equal(fam["muon (rms 0.2) @ adamw"][k], u, err_msg=k)
  for k in flat:
    base = fam["muon (layer)"][k]
    if k in hidden:
      m, n = layer(*flat[k]).matrix_shape(flat[k][1].shape)[1:]
      mats = lambda u, m=m, n=n: u.reshape(-1, m, n)
      # AdaMuon: every matrix's update has RMS 0.2 x lr.
      rms = np.sqrt(np.mean(mats(fam["adamuon"][k]) ** 2, axis=(1, 2)))
      np.testing.assert_allclose(rms, 0.2 * lr, rtol=1e-3, err_msg=k)
      # Muon with consistent RMS 0.2: Muon's direction rescaled from
      # √max(1, n/m) to 0.2 √max(m, n), plus the decay lr x WD x w.
      ratio = 0.2 * max(m, n) ** 0.5 / max(1.0, n / m) ** 0.5
      np.testing.assert_allclose(fam["muon (rms 0.2)"][k] + lr * 0.1 * w[k],
                                 ratio * base, rtol=1e-4, atol=1e-7, err_msg=k)
      # NorMuon: Muon's matrices renormalized, not Muon's step.
      assert np.abs(fam["normuon"][k] - base).max() > 1e-4, k
    else:
      # The Adam leaves: NorMuon's as Muon's (lr x ADAM_LR_RATIO); AdaMuon's
      # at lr (its first step lr x sign(g)); the RMS-0.2 Muon's at lr with
      # the decay (10x Muon's Adam step).
      np.testing.assert_array_equal(fam["normuon"][k], base, err_msg=k)
      np.testing.assert_allclose(fam["adamuon"][k], -lr * np.sign(g[k]),
                                 rtol=1e-4, err_msg=k)
      np.testing.assert_allclose(fam["muon (rms 0.2)"][k] + lr * 0.1 * w[k],
                                 base / mod.ADAM_LR_RATIO, rtol=1e-4, atol=1e-8,
                                 err_msg=k)


def test_committed_full_results_follow_the_protocol(load_bench):
  if not RESULT.exists():
    pytest.skip("full results not committed yet")
  mod, common = load_bench("norms_lm"), load_bench("_common")
  payload = json.loads(RESULT.read_text())
  cfg = payload["config"]
  assert not payload["quick"]
  assert cfg["methods"] == list(mod.METHODS)
  assert {k: cfg[k] for k in mod.FULL} == mod.FULL
  assert cfg["grid_centers"] == mod.GRID_CENTERS
  assert cfg["muon_family"]["weight_decay"] == mod.WD
  untuned = payload["tuning"]["muon (rms 0.2) @ adamw"]
  assert untuned["untuned"] and untuned["lr_from"] == "adamw"
  assert untuned["chosen"] == payload["tuning"]["adamw"]["chosen"]
  # The two parts (the first six methods, then issue 29's), each with the
  # sources it ran on; the untuned method ran in adamw's part.
  if payload.get("parts"):
    assert sorted(m for p in payload["parts"] for m in p["methods"]) == sorted(mod.METHODS)
    assert all(p["sources"] for p in payload["parts"])
    assert any({"adamw", "muon (rms 0.2) @ adamw"} <= set(p["methods"])
               for p in payload["parts"])
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  for res in payload["results"].values():
    for key in ("train_loss", "val_loss"):
      arr = np.asarray(res[key])
      assert arr.shape == (5, n_points) and np.all(np.isfinite(arr))
  _check_tuning(payload, common, committed=True)
  _check_claims(payload, common)
  assert [c["claim"] for c in payload["claims"]] == [t for t, *_ in mod.CLAIMS]
  _check_layouts_record(mod, cfg)
  md = RESULT.with_suffix(".md").read_text()
  assert cfg["layouts"]["layer"] in md

"""Executes the notebooks in ``notebooks/`` top to bottom and checks their outputs.

The kernel is this interpreter (``sys.executable -m ipykernel_launcher``), found
through a kernelspec written to a temporary directory, so no kernel has to be
registered with Jupyter. Each notebook gets an extra last cell that prints its
results as JSON; the assertions read those numbers back.
"""

import json
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
KernelSpecManager = pytest.importorskip("jupyter_client.kernelspec").KernelSpecManager
AsyncKernelManager = pytest.importorskip("jupyter_client.manager").AsyncKernelManager

# Executes whole notebooks: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
RESULTS = ROOT / "benchmarks" / "results"
PROBE = "__NOTEBOOK_PROBE__"
TIMEOUT_S = 600  # per cell; each notebook runs in well under 3 minutes on CPU


def _execute(tmp_path, name, probe_expr, env=None):
  """Runs ``notebooks/<name>`` in a fresh kernel; returns (nb, probe dict)."""
  spec_dir = tmp_path / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "normopt test kernel",
      "language": "python",
      "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline", **(env or {})},
  }))
  ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
  km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ksm)

  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  for cell in nb.cells:
    assert not cell.get("outputs") and cell.get("execution_count") is None, (
        f"{name} is committed with outputs")
  nb.cells.append(nbformat.v4.new_code_cell(
      f"import json as _json\nprint({PROBE!r}, _json.dumps({probe_expr}))"))
  client = nbclient.NotebookClient(
      nb, km=km, timeout=TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()
  text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
  line = next(l for l in text.splitlines() if l.startswith(PROBE))
  return nb, json.loads(line[len(PROBE):])


def _cell_text(cell):
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _has_png(cell):
  return any("image/png" in o.get("data", {}) for o in cell.outputs)


def test_quickstart(tmp_path):
  nb, out = _execute(
      tmp_path, "quickstart.ipynb",
      "dict(final_loss=final_loss, accuracy=accuracy, steps=STEPS,"
      " first_loss={k: float(v[0]) for k, v in curves.items()},"
      " lengths={k: len(v) for k, v in curves.items()},"
      " n_blocks={m: len(normopt.block_partition(params, m))"
      " for m in ('leaf', 'layer', 'global', 'unit')},"
      " n_leaves=len(jax.tree.leaves(params)), n_layers=len(params),"
      " kernel_norm=float(kernel_norm))")
  code = [c for c in nb.cells if c.cell_type == "code"]
  # Outside Colab the install cell is a no-op: it prints nothing.
  assert "google.colab" in code[0].source and not code[0].outputs

  names = ["optax.adam", "normopt.adam_ng", "normopt.adam_norm"]
  assert sorted(out["final_loss"]) == sorted(names)
  for name in names:
    assert out["lengths"][name] == out["steps"]
    # Training works: from ~ln(10) to a small fraction of it, and the digits
    # are recognised on held-out data.
    assert out["final_loss"][name] < 0.15 * out["first_loss"][name], name
    assert out["accuracy"][name] > 0.9, name
  assert any(_has_png(c) for c in code), "no loss plot"

  # The blocks section printed each mode's partition, and it cuts as documented.
  printed = "".join(_cell_text(c) for c in code)
  for mode in ("leaf", "layer", "global", "unit"):
    assert f'blocks="{mode}"' in printed
  assert out["n_blocks"] == {"leaf": out["n_leaves"], "layer": out["n_layers"],
                             "global": 1, "unit": out["n_leaves"]}
  # block_normalize with a callable blocks rule then optax.scale(-0.1): the
  # kernels' block of the update has norm 0.1.
  assert out["kernel_norm"] == pytest.approx(0.1, rel=1e-4)


# The committed results files the paper-claims notebook draws, one section each.
CLAIM_RESULTS = ("bng_mlp_digits", "bng_cnn", "bng_lstm", "s_sngd",
                 "adanorm_cnn", "ndadam", "norms_lm", "step_overhead")


def test_paper_claims(tmp_path):
  nb, out = _execute(
      tmp_path, "paper_claims.ipynb",
      # A results file that does not exist must give a note, not an error.
      "(section('no_such_benchmark', None), dict(plotted=plotted,"
      " missing=missing, failed=failed, results=str(RESULTS)))[1]",
      env={"NORMOPT_RESULTS": ""})  # the committed results, not an override
  assert pathlib.Path(out["results"]).resolve() == RESULTS.resolve()
  present = {n for n in CLAIM_RESULTS if (RESULTS / f"{n}.json").exists()}
  # Every committed results file is really drawn (its schema is understood),
  # every absent one gives a note, and nothing else happens.
  assert out["failed"] == {}
  assert sorted(out["plotted"]) == sorted(present)
  assert sorted(out["missing"]) == sorted(set(CLAIM_RESULTS) - present | {"no_such_benchmark"})
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert "google.colab" in code[0].source and not code[0].outputs
  assert sum(_has_png(c) for c in code) == len(present)
  notes = "".join(o.get("data", {}).get("text/markdown", "") for c in code for o in c.outputs)
  for name in set(CLAIM_RESULTS) - present:
    assert f"`{name}.json` is not in" in notes

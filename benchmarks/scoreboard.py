"""The claims scoreboard: every paper claim the benchmarks judge, in one table.

Reads the committed results (``benchmarks/results/<name>.json``) of the
reproduction benchmarks and renders, per paper, each claim with the paper's
number (where known), ours (the mean paired difference over the final seeds
with its 95% confidence interval) and the verdict, by the one rule of
``_common.VERDICT_RULE``; and each benchmark's tuned step sizes. README's
"Results" section holds this output between two markers, and the notebook
``notebooks/paper_claims.ipynb`` draws the same records.

This module needs only the standard library (no JAX), so the notebook can
import it in Colab. Run from the repository root::

  python benchmarks/scoreboard.py            # print the scoreboard
  python benchmarks/scoreboard.py --readme   # rewrite README's copy of it
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
import json
import math
import pathlib

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
START = "<!-- scoreboard:start (python benchmarks/scoreboard.py --readme) -->"
END = "<!-- scoreboard:end -->"

#: Papers and the benchmarks that reproduce their claims, in README order.
PAPERS = (
    ("BNG: block-normalized gradients (Yu et al. 2017)",
     ("bng_mlp_digits", "bng_cnn", "bng_lstm")),
    ("SNGD and stagewise S-SNGD (Zhao et al. 2021)", ("s_sngd",)),
    ("AdaNorm (Dubey et al. 2023)", ("adanorm_cnn",)),
    ("ND-Adam and regularized softmax (Zhang et al. 2018)", ("ndadam",)),
    ("Norms: Muon, Scion (Jordan et al. 2024; Pethick et al. 2025)", ("norms_lm",)),
)
BENCHMARKS = tuple(b for _, names in PAPERS for b in names)
VERDICTS = ("holds", "within noise", "reversed")


def load(name: str, results_dir: pathlib.Path = RESULTS_DIR) -> dict | None:
  """``<results_dir>/<name>.json``, or None if it is not there."""
  path = pathlib.Path(results_dir) / f"{name}.json"
  return json.loads(path.read_text()) if path.exists() else None


def claims(data: dict | None) -> list[dict]:
  """The claim records (``_common.claim``) of a results file."""
  return [c for c in (data or {}).get("claims", []) if "ci" in c]


def tuning(data: dict | None, prefix: str = "") -> Iterator[tuple[str, dict]]:
  """``(label, record)`` for every ``tune_lr`` record, however nested (a
  record is a dict with ``chosen``; nesting keys join into the label)."""
  tree = (data or {}).get("tuning", {}) if not prefix else data
  for key, value in (tree or {}).items():
    label = f"{prefix} {key}".strip()
    if isinstance(value, dict) and "chosen" in value:
      yield label, value
    elif isinstance(value, dict):
      yield from tuning(value, label)


def _decimals(c: dict) -> int:
  """Two significant digits of the CI's half-width (at least 0 decimals)."""
  half = abs(c["ci"][1] - c["ci"][0]) / 2 or abs(c["diff"]) or 1.0
  return max(0, 1 - math.floor(math.log10(half)))


def fmt_claim(c: dict) -> str:
  """``-0.123 [-0.200, -0.046]``: the mean paired difference and its CI."""
  d = _decimals(c)
  f = lambda x: f"{x:+.{d}f}"
  return f"{f(c['diff'])} [{f(c['ci'][0])}, {f(c['ci'][1])}]"


def fmt_lr(lr: float) -> str:
  return f"{lr:.3g}"


def _cell(text) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ") if text else "–"


def describe(c: dict, keys=("group", "when", "metric")) -> str:
  """Where a claim was judged: its group (depth, model, ...), time, metric."""
  return ", ".join(str(c[k]) for k in keys if c.get(k))


def claims_table(name: str, data: dict) -> list[str]:
  """Markdown rows: claim, setting, the paper's number, ours, verdict.

  A paper statement longer than a short number goes below the table once,
  as a numbered note that its rows cite (``[1]``).
  """
  rows = ["| claim | setting | paper | ours: A − B, mean [95% CI] | verdict |",
          "|---|---|---|---|---|"]
  notes: list[str] = []
  for c in claims(data):
    setting = describe(c)
    verdict = f"**{c['verdict']}**" if c["verdict"] != "within noise" else c["verdict"]
    paper = c.get("paper")
    if paper and len(paper) > 40:
      if paper not in notes:
        notes.append(paper)
      paper = f"[{notes.index(paper) + 1}]"
    rows.append(f"| {_cell(c['claim'])} | {_cell(setting)} | {_cell(paper)} |"
                f" {fmt_claim(c)} | {verdict} |")
  if notes:
    rows += [""] + [f"[{i}] {_cell(text)}" + ("  " if i < len(notes) else "")
                    for i, text in enumerate(notes, 1)]
  return rows


def tuning_line(data: dict) -> str:
  """One line: every method's chosen step size (an edge choice marked ``*``)."""
  items = [f"{label} {fmt_lr(r['chosen'])}{'' if r.get('interior', True) else '*'}"
           for label, r in tuning(data)]
  return "; ".join(items)


def counts(records: list[dict]) -> dict[str, int]:
  return {v: sum(c["verdict"] == v for c in records) for v in VERDICTS}


def scoreboard(results_dir: pathlib.Path = RESULTS_DIR) -> str:
  """The whole scoreboard as markdown (README's "Results" copy)."""
  out = []
  everything = []
  for paper, names in PAPERS:
    out += [f"**{paper}**", ""]
    for name in names:
      data = load(name, results_dir)
      if not claims(data):
        out += [f"`benchmarks/{name}.py`: no judged claims in "
                f"`benchmarks/results/{name}.json` yet.", ""]
        continue
      everything += claims(data)
      n = counts(claims(data))
      out += [f"`benchmarks/{name}.py` — {n['holds']} hold, {n['within noise']} "
              f"within noise, {n['reversed']} reversed "
              f"(tables: `benchmarks/results/{name}.md`):", ""]
      out += claims_table(name, data) + [""]
      line = tuning_line(data)
      if line:
        out += [f"Tuned step sizes: {line}.", ""]
  n = counts(everything)
  head = [f"**{len(everything)} claims: {n['holds']} hold, {n['within noise']} are "
          f"within noise, {n['reversed']} are reversed.** A − B is the first-named "
          "method minus the second, in the metric named (negative favours A for "
          "losses and errors, positive for accuracies). `*`: the chosen step size "
          "is still at the edge of its widened grid.", ""]
  return "\n".join(head + out).rstrip("\n") + "\n"


def readme_block(text: str) -> str:
  """The scoreboard copy between the markers of a README text."""
  try:
    start = text.index(START) + len(START)
    end = text.index(END, start)
  except ValueError as e:
    raise ValueError("README.md has no scoreboard markers") from e
  return text[start:end].strip("\n") + "\n"


def write_readme(results_dir: pathlib.Path = RESULTS_DIR,
                 readme: pathlib.Path = README) -> None:
  text = readme.read_text(encoding="utf-8")
  old = readme_block(text)
  start = text.index(START) + len(START)
  end = text.index(END, start)
  new = scoreboard(results_dir)
  readme.write_text(text[:start] + "\n" + new + text[end:], encoding="utf-8")
  print("README.md scoreboard", "unchanged" if new == old else "rewritten")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--readme", action="store_true",
                      help="rewrite the scoreboard between README's markers")
  parser.add_argument("--results", default=str(RESULTS_DIR))
  args = parser.parse_args(argv)
  if args.readme:
    write_readme(pathlib.Path(args.results))
  else:
    print(scoreboard(pathlib.Path(args.results)))


if __name__ == "__main__":
  main()

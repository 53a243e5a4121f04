"""README's Python example runs and trains; its commands match .ci/run."""

import pathlib
import re

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs_and_lowers_the_loss():
  blocks = re.findall(r"```python\n(.*?)```", README, re.S)
  assert blocks, "README has no python example"
  ns = {}
  exec(compile(blocks[0], "README.md", "exec"), ns)
  # Three steps of adam_ng at 1e-3 on a fixed batch: the loss went down.
  params, opt_state, step = ns["params"], ns["opt_state"], ns["train_step"]
  losses = []
  for _ in range(5):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_ci_runs_exactly_the_readme_test_command():
  commands = re.findall(r"```bash\n(.*?)```", README, re.S)
  test_cmd = [
      l for c in commands for l in c.splitlines() if "pytest" in l and not l.startswith("#")
  ]
  assert len(test_cmd) == 1
  ci = (ROOT / ".ci" / "run").read_text()
  assert test_cmd[0].strip() in [l.strip() for l in ci.splitlines()]


def test_readme_norms_example_runs():
  """The Norms section's block: each optimizer steps the first example's MLP."""
  blocks = re.findall(r"```python\n(.*?)```", README, re.S)
  norms = [b for b in blocks if "normopt.muon(" in b]
  assert len(norms) == 1
  ns = {}
  exec(compile(blocks[0], "README.md", "exec"), ns)
  exec(compile(norms[0], "README.md", "exec"), ns)
  params, grads = ns["params"], jax.tree.map(np.ones_like, ns["params"])
  for name in ("tx", "muon_matrices", "signum"):
    tx = ns[name]
    u, _ = tx.update(grads, tx.init(params), params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(u)), name
  lay = ns["layouts"]
  assert lay["Dense_0/kernel"].kind == "hidden" and lay["Dense_6/kernel"].kind == "head"
  u, _ = ns["signum"].update(grads, ns["signum"].init(params))
  np.testing.assert_allclose(jax.tree.leaves(u)[0], -1e-3)

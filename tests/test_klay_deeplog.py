"""DeepLog (PyPI ``pydeeplog``) on trilay through the klay switch: the same training run as on
KLay.

DeepLog does ``import klay`` itself; a user switches it to trilay with two lines
(``from trilay.frontends.klay import install; install()``). The test trains a small DeepLog
program (a network's four outputs under an exactly-one constraint, DeepLog's semantic-loss
example) for a few steps twice, in fresh processes: once on the KLay DeepLog installs, once
after the switch. Oracles: the KLay run (losses, the trained parameters and the outputs), and
the constraint's probability written out by hand (``sum_i p_i prod_{j != i} (1 - p_j)``).

pydeeplog needs Python >= 3.12 and pins ``klaycircuits<0.1``: where it is not installed (the
project's CI runs 3.11) the test skips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trilay.frontends

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deeplog") is None or importlib.util.find_spec("klay") is None,
    reason="pydeeplog (Python >= 3.12, with its klaycircuits<0.1) is not installed",
)

TRAIN = """
import json, sys

if sys.argv[1] == "trilay":
    from trilay.frontends.klay import install
    install()

import torch
from deeplog import parse_formula_to_module

n = 4
terms = [
    " and ".join(
        [f"=(D{i},true)_boolean"] + [f"(not =(D{j},true)_boolean)" for j in range(n) if j != i]
    )
    for i in range(n)
]
variables = ", ".join(f"D{i}" for i in range(n))
constraint = parse_formula_to_module(f"expectation({variables}): ({') or ('.join(terms)})")
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(5, n), torch.nn.Sigmoid())
optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
x = torch.randn(16, 5)
losses = []
for step in range(5):
    p = net(x)
    out = constraint(*p.split(1, dim=-1))[:, 0]
    loss = -torch.log(out).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
p = p.detach()
others = [torch.cat([1 - p[:, :i], 1 - p[:, i + 1 :]], 1).prod(1) for i in range(n)]
by_hand = sum(p[:, i] * others[i] for i in range(n))
circuits = [type(m) for m in constraint.modules() if type(m).__name__ == "CircuitModule"]
print(json.dumps({
    "losses": losses,
    "out": out.tolist(),
    "by_hand": by_hand.tolist(),
    "parameters": [t.detach().flatten().tolist() for t in net.parameters()],
    "circuit_modules": [f"{t.__module__}.{t.__name__}" for t in circuits],
}))
"""


def train(backend: str, tmp_path: Path) -> dict:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    # The child process imports trilay from where this one does.
    root = str(Path(trilay.frontends.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(script), backend],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_deeplog_trains_on_trilay_as_on_klay(tmp_path):
    klay_run = train("klay", tmp_path)
    trilay_run = train("trilay", tmp_path)
    assert klay_run["circuit_modules"] == ["klay.torch.circuit_modules.CircuitModule"]
    assert trilay_run["circuit_modules"] == [  # trilay's KLay module, the engine's within
        "trilay.frontends.klay.modules.CircuitModule",
        "trilay.engine.module.CircuitModule",
    ]
    for run in (klay_run, trilay_run):
        torch.testing.assert_close(torch.tensor(run["out"]), torch.tensor(run["by_hand"]))
    assert trilay_run["losses"][-1] < trilay_run["losses"][0]  # it learns
    for key in ("losses", "out", "parameters"):
        torch.testing.assert_close(
            torch.tensor(sum(trilay_run[key], []) if key == "parameters" else trilay_run[key]),
            torch.tensor(sum(klay_run[key], []) if key == "parameters" else klay_run[key]),
        )

"""An LTN-style knowledge base in fuzzy logic: classes learned from positives plus one axiom.

``python -m trilay.frontends.examples.fuzzy_ltn`` (torch only).

Three Gaussian clusters in the plane, classes ``A``, ``B``, ``C``. A small network grounds the
three predicates (sigmoid truth values). The knowledge base, in the product logic (LTN's
default: product t-norm, probabilistic sum, Reichenbach implication):

- ``forall x in labeled_c: c(x)`` for each class (five labeled points per class, positives
  only);
- ``forall x: (A | B | C) & (A -> ~B) & (A -> ~C) & (B -> ~C)``: every point has exactly one
  class, over labeled and unlabeled points alike.

Quantifiers are LTN's p-mean error (``forall``, p = 2) and the axioms are aggregated with
``sat_agg``; training maximizes the satisfaction. With the positives alone, calling every
point everything satisfies the knowledge base; the exclusivity axiom is what supplies the
negative knowledge. The script trains both knowledge bases and prints each axiom's
satisfaction and the test accuracy.
"""

from __future__ import annotations

import argparse
import time

import torch
from trilay.frontends.fuzzy import FuzzyFormula, forall, parse, sat_agg

CENTERS = torch.tensor([[0.0, 2.0], [-1.8, -1.0], [1.8, -1.0]])


def clusters(n_per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_per_class`` points around each center: ``([3 n, 2], [3 n])``."""
    labels = torch.arange(3).repeat_interleave(n_per_class)
    points = CENTERS[labels] + 0.8 * torch.randn(len(labels), 2, generator=generator)
    return points, labels


def train(use_axiom: bool, args) -> dict:
    g = torch.Generator().manual_seed(args.seed)
    x_labeled, y_labeled = clusters(args.labeled, g)
    x_all, _ = clusters(args.unlabeled, g)
    x_test, y_test = clusters(500, g)
    torch.manual_seed(args.seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.ELU(), torch.nn.Linear(16, 3), torch.nn.Sigmoid()
    )
    # One formula, its variables the network's three outputs in order.
    one_class = FuzzyFormula(
        parse("(A | B | C) & (A -> ~B) & (A -> ~C) & (B -> ~C)"),
        "product",
        variables=["A", "B", "C"],
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)

    def axioms():
        truth = net(x_labeled)
        found = {
            f"forall labeled_{c}: {c}(x)": forall(truth[y_labeled == i, i])
            for i, c in enumerate("ABC")
        }
        if use_axiom:
            everything = torch.cat([x_labeled, x_all])
            found["forall x: exactly one class"] = forall(one_class(net(everything))[:, 0])
        return found

    start = time.perf_counter()
    for _ in range(args.steps):
        satisfaction = sat_agg(*axioms().values())
        optimizer.zero_grad()
        (1 - satisfaction).backward()
        optimizer.step()
    step_ms = 1000 * (time.perf_counter() - start) / args.steps
    with torch.no_grad():
        truth = net(x_test)
        return {
            "axioms": {name: t.item() for name, t in axioms().items()},
            "sat_agg": sat_agg(*axioms().values()).item(),
            "accuracy": (truth.argmax(-1) == y_test).float().mean().item(),
            "exactly one": ((truth > 0.5).sum(-1) == 1).float().mean().item(),
            "step ms": step_ms,
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labeled", type=int, default=5, help="labeled points per class")
    parser.add_argument("--unlabeled", type=int, default=100, help="unlabeled points per class")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    for use_axiom in (False, True):
        r = train(use_axiom, args)
        title = "positives + exactly-one axiom" if use_axiom else "positives only"
        print(
            f"{title}: test accuracy {r['accuracy']:.3f}, exactly one true "
            f"{r['exactly one']:.3f}, sat_agg {r['sat_agg']:.3f} ({r['step ms']:.1f} ms/step)"
        )
        for name, value in r["axioms"].items():
            print(f"    {value:.3f}  {name}")


if __name__ == "__main__":
    main()

"""Semantic loss on scikit-learn's digits: a multi-label classifier told "exactly one digit".

``python -m trilay.frontends.examples.semantic_loss_digits`` (needs scikit-learn).

A small MLP has 10 independent sigmoid outputs, one per digit, trained with binary
cross-entropy on a few labeled images (semi-supervised, as in Xu et al. 2018). The semantic
loss of ``exactly_one(10)``, on every training image labeled or not, adds the knowledge that
exactly one output is true. Both runs share the seeds, the data and the schedule; the script
prints, on the held-out images and averaged over the seeds, the exact-match accuracy (the
thresholded outputs are exactly the true label), the share of predictions that satisfy the
constraint, argmax accuracy, and the median epoch time.
"""

from __future__ import annotations

import argparse
import time

import torch
from trilay.frontends.semantic_loss import SemanticLoss, exactly_one


def load(seed: int, labeled: int, device: str):
    """Digits scaled to ``[0, 1]``: ``(x_train, y_train, is_labeled, x_test, y_test)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from err
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = len(y) // 3
    x_train, y_train = x[n_test:], y[n_test:]
    # labels spread evenly over the classes, so that every digit has a few
    per_class = max(1, labeled // 10)
    is_labeled = torch.zeros(len(y_train), dtype=torch.bool)
    for digit in range(10):
        is_labeled[torch.nonzero(y_train == digit)[:per_class, 0]] = True
    to = lambda t: t.to(device)  # noqa: E731
    return to(x_train), to(y_train), to(is_labeled), to(x[:n_test]), to(y[:n_test])


def train(data, semantic_weight: float, seed: int, args) -> dict:
    x_train, y_train, is_labeled, x_test, y_test = data
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 10)
    ).to(args.device)
    semantic = SemanticLoss(exactly_one(10), from_logits=True).to(args.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    targets = torch.nn.functional.one_hot(y_train, 10).float()
    generator = torch.Generator().manual_seed(seed)
    epoch_times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        for batch in torch.randperm(len(y_train), generator=generator).split(args.batch):
            batch = batch.to(args.device)
            logits = net(x_train[batch])
            mask = is_labeled[batch]
            # mean over the labeled images of the batch (zero when it has none)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                logits[mask], targets[batch][mask], reduction="sum"
            ) / mask.sum().clamp(min=1)
            loss = bce + semantic_weight * semantic(logits) if semantic_weight else bce
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - start)
    with torch.no_grad():
        predicted = net(x_test) > 0
        truth = torch.nn.functional.one_hot(y_test, 10).bool()
        return {
            "exact match": (predicted == truth).all(-1).float().mean().item(),
            "exactly one": (predicted.sum(-1) == 1).float().mean().item(),
            "argmax": (net(x_test).argmax(-1) == y_test).float().mean().item(),
            "epoch ms": 1000 * sorted(epoch_times)[len(epoch_times) // 2],
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labeled", type=int, default=50, help="labeled training images")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight", type=float, default=1.0, help="semantic loss weight")
    parser.add_argument("--seeds", type=int, default=3, help="runs to average (seeds 0..)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    print(
        f"digits, {args.labeled} labeled training images, {args.epochs} epochs, batch "
        f"{args.batch}, device {args.device}, mean over {args.seeds} seeds (held-out images)"
    )
    runs = {"cross-entropy only": 0.0, f"+ {args.weight} x semantic loss": args.weight}
    results = {name: [] for name in runs}
    for seed in range(args.seeds):
        data = load(seed, args.labeled, args.device)
        for name, weight in runs.items():
            results[name].append(train(data, weight, seed, args))
    print(f"{'':32} {'exact match':>12} {'exactly one':>12} {'argmax':>8} {'epoch':>9}")
    for name, rs in results.items():
        mean = {key: sum(r[key] for r in rs) / len(rs) for key in rs[0]}
        print(
            f"{name:32} {mean['exact match']:12.3f} {mean['exactly one']:12.3f} "
            f"{mean['argmax']:8.3f} {mean['epoch ms']:7.1f}ms"
        )


if __name__ == "__main__":
    main()

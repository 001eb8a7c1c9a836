"""MNIST addition (Manhaeve et al. 2018) on trilay: two N-digit numbers given as images, only
their sum supervises.

Runs on scikit-learn's bundled ``load_digits`` (1,797 8x8 images; nothing is downloaded): the
images are split into 1,200 training and 597 test images, so test pairs use held-out images.
``--mnist DIR`` trains on the real MNIST IDX files instead (``train-images-idx3-ubyte`` etc.,
optionally gzipped)::

    python -m trilay.frontends.deepproblog.mnist_addition --digits 1 2 3
    python -m trilay.frontends.deepproblog.mnist_addition --digits 1 --compare  # + DeepProbLog

For ``N = 1`` the program is DeepProbLog's ``addition/3``; for ``N > 1`` it is a digit-by-digit
addition with carry (``multi_addition/3``), which has the same answers as DeepProbLog's
``number/2``-based program but grounds in ``O(N)`` instead of ``O(10^N)`` per query. Every
batch is one circuit pass: the queries of all training and test pairs are compiled up front
into one multi-rooted circuit (one root per distinct sum), each batch row picks its root.

Accuracy is the fraction of test pairs whose sum, computed from the network's most probable
digits, is the true sum.
"""

from __future__ import annotations

import argparse
import gzip
import os
import struct
import time

import numpy as np
import torch

from .model import Model

PROGRAM = """\
:- use_module(library(lists)).
nn(mnist_net, [X], Y, [0,1,2,3,4,5,6,7,8,9]) :: digit(X, Y).
addition(X, Y, Z) :- digit(X, X2), digit(Y, Y2), Z is X2 + Y2.
multi_addition(X, Y, Z) :- reverse(X, RX), reverse(Y, RY), add_digits(RX, RY, 0, Z).
add_digits([], [], Carry, Z) :- Z =:= Carry.
add_digits([X|Xs], [Y|Ys], Carry, Z) :-
    digit(X, DX), DY is (Z - DX - Carry) mod 10, digit(Y, DY),
    C2 is (DX + DY + Carry) // 10, Z2 is Z // 10, add_digits(Xs, Ys, C2, Z2).
"""


# ---------------------------------------------------------------------------- data
def load_digits_split(train_size: int = 1200, seed: int = 0):
    """scikit-learn's digits, shuffled and split: ``(train_x [n, 1, 8, 8], train_y [n],
    test_x, test_y)``, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return x[:train_size], y[:train_size], x[train_size:], y[train_size:]


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (MNIST's format, ``.gz`` or not) as a numpy array of its declared shape.

    Raises ``ValueError`` when the magic number, type code or size does not match."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{os.fspath(path)}: not an IDX file (bad magic number)")
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in types:
        raise ValueError(f"{os.fspath(path)}: unknown IDX type code {data[2]:#x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(types[data[2]])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{os.fspath(path)}: {len(body)} data bytes for shape {shape}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def load_mnist(directory: str | os.PathLike):
    """The MNIST IDX files in ``directory`` as ``(train_x [n, 1, 28, 28], train_y, test_x,
    test_y)``, pixels scaled to [0, 1]."""

    def find(stem):
        for name in (stem, stem + ".gz"):
            path = os.path.join(directory, name)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(f"{stem}[.gz] not found in {os.fspath(directory)}")

    def images(stem):
        return torch.tensor(load_idx(find(stem)), dtype=torch.float32)[:, None] / 255.0

    def labels(stem):
        return torch.tensor(load_idx(find(stem)), dtype=torch.long)

    return (
        images("train-images-idx3-ubyte"),
        labels("train-labels-idx1-ubyte"),
        images("t10k-images-idx3-ubyte"),
        labels("t10k-labels-idx1-ubyte"),
    )


def make_pairs(num_images: int, digits: int, generator: torch.Generator) -> torch.Tensor:
    """A random pairing of the images into examples: ``[num_images // (2 N), 2, N]`` image
    indices (number 0, number 1; most significant digit first)."""
    per = 2 * digits
    order = torch.randperm(num_images, generator=generator)
    return order[: num_images // per * per].reshape(-1, 2, digits)


def pair_sums(pairs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[P, 2, N]`` image indices -> ``[P]`` the sums of the two N-digit numbers."""
    digits = pairs.shape[2]
    place = 10 ** torch.arange(digits - 1, -1, -1)
    return (labels[pairs] * place).sum(dim=(1, 2))


def queries(sums: torch.Tensor, digits: int) -> list[str]:
    """The query text of each pair; the images are the inputs ``a0..``, ``b0..``."""
    if digits == 1:
        return [f"addition(a0, b0, {int(s)})" for s in sums]
    a = ",".join(f"a{i}" for i in range(digits))
    b = ",".join(f"b{i}" for i in range(digits))
    return [f"multi_addition([{a}], [{b}], {int(s)})" for s in sums]


def inputs(images: torch.Tensor, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{a_i, b_i: [P, ...]}``: the image of digit ``i`` of each pair's numbers."""
    digits = pairs.shape[2]
    named = {f"a{i}": images[pairs[:, 0, i]] for i in range(digits)}
    named.update({f"b{i}": images[pairs[:, 1, i]] for i in range(digits)})
    return named


# ---------------------------------------------------------------------------- network
class DigitNet(torch.nn.Module):
    """An MLP classifier: ``[rows, 1, H, W]`` images -> ``[rows, 10]`` log-probabilities.

    ``softmax=True`` returns probabilities (DeepProbLog's networks must)."""

    def __init__(self, pixels: int, hidden: int = 128, softmax: bool = False):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(pixels, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 10),
        )
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.layers(x)
        return logits.softmax(-1) if self.softmax else logits.log_softmax(-1)


def _network(pixels: int, seed: int, softmax: bool = False) -> DigitNet:
    torch.manual_seed(seed)
    return DigitNet(pixels, softmax=softmax)


def sum_accuracy(net: DigitNet, images, labels, pairs) -> float:
    """Fraction of pairs whose sum from the network's most probable digits is right."""
    with torch.no_grad():
        predicted = net(images).argmax(-1)
    return float((pair_sums(pairs, predicted) == pair_sums(pairs, labels)).float().mean())


# ---------------------------------------------------------------------------- training
def train(
    digits: int,
    data=None,
    epochs: int = 12,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    log=print,
) -> dict:
    """Train MNIST addition with ``digits`` digits per number on trilay.

    The images are paired once (``len(train) // (2 N)`` training pairs, as DeepProbLog's
    dataset does); each epoch visits the training pairs in a new order. Returns
    ``{"epoch_seconds": [...], "accuracy": [...], "compile_seconds", "circuit_nodes",
    "train_pairs", "test_pairs"}`` (test accuracy after each epoch)."""
    train_x, train_y, test_x, test_y = data if data is not None else load_digits_split()
    generator = torch.Generator().manual_seed(seed)
    net = _network(train_x[0].numel(), seed)
    model = Model(PROGRAM, {"mnist_net": net}, outputs="log_probs", check_outputs=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    pairs = make_pairs(len(train_y), digits, generator)
    sums = pair_sums(pairs, train_y)
    test_pairs = make_pairs(len(test_y), digits, generator)

    # The sums of all pairs become one multi-rooted circuit, compiled before training.
    start = time.perf_counter()
    model.prepare(queries(torch.cat([sums, pair_sums(test_pairs, test_y)]).unique(), digits))
    result = {
        "digits": digits,
        "compile_seconds": time.perf_counter() - start,
        "circuit_nodes": sum(c.num_nodes for c in model.circuits),
        "epoch_seconds": [],
        "accuracy": [],
        "train_pairs": len(pairs),
        "test_pairs": len(test_pairs),
    }
    for epoch in range(epochs):
        order = torch.randperm(len(pairs), generator=generator)
        start = time.perf_counter()
        for i in range(0, len(pairs), batch_size):
            batch = order[i : i + batch_size]
            loss = model.loss(queries(sums[batch], digits), inputs(train_x, pairs[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        result["epoch_seconds"].append(time.perf_counter() - start)
        result["accuracy"].append(sum_accuracy(net, test_x, test_y, test_pairs))
        log(
            f"N={digits} epoch {epoch + 1}: {result['epoch_seconds'][-1]:.2f} s "
            f"({len(pairs)} pairs), test sum accuracy {result['accuracy'][-1]:.4f}"
        )
    return result


# ---------------------------------------------------------------------------- DeepProbLog
def compare_deepproblog(
    digits: int,
    data=None,
    num_queries: int | None = None,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict | None:
    """Train DeepProbLog 2.1.0's own ``Model`` with its ``ExactEngine`` (cache on) for one
    pass over the training pairs of :func:`train` (same program, pairs, network
    initialization, optimizer, batch size; the first ``num_queries`` pairs only, when given).
    Returns ``{"seconds", "queries", "seconds_per_query", "epoch_seconds_estimate",
    "accuracy"}``, or ``None`` when deepproblog is not importable (it is not a dependency: its
    wheel pulls in a CUDA torch; ``pip install --no-deps deepproblog`` works beside trilay)."""
    try:
        from deepproblog.dataset import DataLoader, Dataset
        from deepproblog.engines import ExactEngine
        from deepproblog.model import Model as DeepProbLogModel
        from deepproblog.network import Network
        from deepproblog.query import Query
        from deepproblog.train import train_model
        from problog.logic import Constant, Term, list2term
    except ImportError:
        return None

    train_x, train_y, test_x, test_y = data if data is not None else load_digits_split()
    generator = torch.Generator().manual_seed(seed)
    pairs = make_pairs(len(train_y), digits, generator)
    sums = pair_sums(pairs, train_y)
    test_pairs = make_pairs(len(test_y), digits, generator)
    if num_queries is not None:
        pairs, sums = pairs[:num_queries], sums[:num_queries]

    class Images:  # DeepProbLog's tensor source: item = (index,)
        def __getitem__(self, item):
            return train_x[int(item[0])]

    def image(i) -> Term:
        return Term("tensor", Term("train", Constant(int(i))))

    class Pairs(Dataset):
        def __len__(self):
            return len(pairs)

        def to_query(self, i):
            a, b = ([image(x) for x in pairs[i, k]] for k in range(2))
            if digits == 1:
                return Query(Term("addition", a[0], b[0], Constant(int(sums[i]))))
            return Query(Term("multi_addition", list2term(a), list2term(b), Constant(int(sums[i]))))

    net = _network(train_x[0].numel(), seed, softmax=True)
    network = Network(net, "mnist_net", batching=True)
    network.optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    model = DeepProbLogModel(PROGRAM, [network], load=False)
    model.set_engine(ExactEngine(model), cache=True)
    model.add_tensor_source("train", Images())
    start = time.perf_counter()
    train_model(model, DataLoader(Pairs(), batch_size, False), 1, log_iter=10**9, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "digits": digits,
        "seconds": seconds,
        "queries": len(pairs),
        "seconds_per_query": seconds / len(pairs),
        "epoch_seconds_estimate": seconds / len(pairs) * (len(train_y) // (2 * digits)),
        "accuracy": sum_accuracy(net, test_x, test_y, test_pairs),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist", metavar="DIR", help="MNIST IDX files instead of load_digits")
    parser.add_argument(
        "--compare", action="store_true", help="also train DeepProbLog 2.1.0 (when installed)"
    )
    parser.add_argument(
        "--compare-queries", type=int, help="DeepProbLog: train on this many pairs (all)"
    )
    args = parser.parse_args(argv)
    data = load_mnist(args.mnist) if args.mnist else load_digits_split(seed=args.seed)
    print(f"data: {len(data[1])} training, {len(data[3])} test images; torch {torch.__version__}")
    rows = []

    def report(row: str) -> None:  # printed at once too: a long comparison keeps what it has
        print(row, flush=True)
        rows.append(row)

    for digits in args.digits:
        r = train(digits, data, args.epochs, args.batch_size, args.lr, args.seed)
        mean = sum(r["epoch_seconds"]) / len(r["epoch_seconds"])
        report(
            f"trilay       N={digits}: compile {r['compile_seconds']:.1f} s "
            f"({r['circuit_nodes']} nodes), epoch {mean:.2f} s ({r['train_pairs']} pairs, "
            f"{1000 * mean / r['train_pairs']:.2f} ms/query), test sum accuracy "
            f"{r['accuracy'][0]:.4f} after 1 epoch, {r['accuracy'][-1]:.4f} after "
            f"{args.epochs} ({r['test_pairs']} pairs)"
        )
        if args.compare:
            d = compare_deepproblog(
                digits, data, args.compare_queries, args.batch_size, args.lr, args.seed
            )
            if d is None:
                report("deepproblog  not installed: comparison skipped")
                continue
            epoch = "epoch" if d["queries"] == r["train_pairs"] else "epoch extrapolated to"
            report(
                f"deepproblog  N={digits}: {d['seconds']:.1f} s for {d['queries']} queries "
                f"({1000 * d['seconds_per_query']:.1f} ms/query, {epoch} "
                f"{d['epoch_seconds_estimate']:.1f} s), test sum accuracy after them "
                f"{d['accuracy']:.4f}"
            )
    print("\n".join(["", "summary:", *rows]))


if __name__ == "__main__":
    main()

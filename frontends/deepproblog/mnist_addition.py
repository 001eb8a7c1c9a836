"""MNIST addition (Manhaeve et al. 2018) on trilay: two N-digit numbers given as images, only
their sum supervises.

Runs on scikit-learn's bundled ``load_digits`` (1,797 8x8 images; nothing is downloaded): the
images are split into 1,200 training and 597 test images, so test pairs use held-out images.
``--mnist DIR`` trains on the real MNIST IDX files instead (``train-images-idx3-ubyte`` etc.,
optionally gzipped)::

    python -m trilay.frontends.deepproblog.mnist_addition --digits 1 2 3 4 15
    python -m trilay.frontends.deepproblog.mnist_addition --digits 1 2 --compare  # + DeepProbLog

Two programs answer the same queries (``addition/3`` for N = 1, ``multi_addition/3`` for
N > 1). :data:`PROGRAM` adds the numbers digit by digit with a carry: its ground formula grows
linearly in N and is a d-DNNF as written, so trilay compiles it directly (see
:mod:`~trilay.frontends.deepproblog.formula`). :data:`DEEPPROBLOG_PROGRAM` is DeepProbLog's own
(``models/addition.pl``: each number as one ``is/2`` over its digits, the sum as another), which
grounds ``10^N`` digit combinations per number: the compatible baseline, for N <= 2 or 3. Every
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

#: MNIST addition with a carry: ``add_digits`` walks the digits from the least significant;
#: in each column the first image's digit and the carry fix the second image's digit
#: (``column/4``) and the next carry.
PROGRAM = """\
:- use_module(library(lists)).
nn(mnist_net, [X], Y, [0,1,2,3,4,5,6,7,8,9]) :: digit(X, Y).
addition(X, Y, Z) :- digit(X, X2), digit(Y, Y2), Z is X2 + Y2.
multi_addition(X, Y, Z) :- reverse(X, RX), reverse(Y, RY), add_digits(RX, RY, 0, Z).
add_digits([], [], Carry, Carry).
add_digits([X|Xs], [Y|Ys], Carry, Z) :-
    Low is Z mod 10 - Carry, High is Z // 10,
    digit(X, DX), column(Low, DX, DY, Next), digit(Y, DY),
    add_digits(Xs, Ys, Next, High).
column(Low, DX, DY, 0) :- DX =< Low, DY is Low - DX.
column(Low, DX, DY, 1) :- DX > Low, DY is Low + 10 - DX.
"""

#: DeepProbLog 2.1.0's ``examples/MNIST/models/addition.pl``, verbatim.
DEEPPROBLOG_PROGRAM = """\
nn(mnist_net,[X],Y,[0,1,2,3,4,5,6,7,8,9]) :: digit(X,Y).

number([],Result,Result).
number([H|T],Acc,Result) :- digit(H,Nr), Acc2 is Nr+10*Acc,number(T,Acc2,Result).
number(X,Y) :- number(X,0,Y).

multi_addition(X,Y,Z) :- number(X,X2),number(Y,Y2), Z is X2+Y2.
addition(X,Y,Z) :- digit(X,X2), digit(Y,Y2), Z is X2+Y2.
"""

PROGRAMS = {"carry": PROGRAM, "deepproblog": DEEPPROBLOG_PROGRAM}

#: DeepProbLog's install line for ``--compare`` (its wheel's dependencies pull a CUDA torch and
#: torchvision, which it does not import; it does import PIL).
DEEPPROBLOG_INSTALL = "pip install Pillow && pip install --no-deps deepproblog==2.1.0"


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
def _split(data, digits: int, seed: int):
    """The pairs of one run: ``(generator, train pairs, their sums, test pairs)``; the
    generator then draws each epoch's order."""
    train_x, train_y, test_x, test_y = data
    generator = torch.Generator().manual_seed(seed)
    pairs = make_pairs(len(train_y), digits, generator)
    return generator, pairs, pair_sums(pairs, train_y), make_pairs(len(test_y), digits, generator)


def train(
    digits: int,
    data=None,
    epochs: int = 12,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    program: str = "carry",
    log=print,
) -> dict:
    """Train MNIST addition with ``digits`` digits per number on trilay, with
    ``PROGRAMS[program]``.

    The images are paired once (``len(train) // (2 N)`` training pairs, as DeepProbLog's
    dataset does); each epoch visits the training pairs in a new order. Returns
    ``{"epoch_seconds": [...], "accuracy": [...], "digit_accuracy", "compile_seconds",
    "circuit_nodes", "circuit_layers", "train_pairs", "test_pairs"}`` (test accuracy after
    each epoch)."""
    data = data if data is not None else load_digits_split()
    train_x, train_y, test_x, test_y = data
    generator, pairs, sums, test_pairs = _split(data, digits, seed)
    net = _network(train_x[0].numel(), seed)
    model = Model(PROGRAMS[program], {"mnist_net": net}, outputs="log_probs", check_outputs=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    texts = queries(sums, digits)

    # The sums of all pairs become one multi-rooted circuit, compiled before training.
    start = time.perf_counter()
    model.prepare(queries(torch.cat([sums, pair_sums(test_pairs, test_y)]).unique(), digits))
    result = {
        "digits": digits,
        "program": program,
        "compile_seconds": time.perf_counter() - start,
        "circuit_nodes": sum(c.num_nodes for c in model.circuits),
        "circuit_layers": max(c.num_layers for c in model.circuits),
        "epoch_seconds": [],
        "accuracy": [],
        "train_pairs": len(pairs),
        "test_pairs": len(test_pairs),
    }
    for epoch in range(epochs):
        order = torch.randperm(len(pairs), generator=generator)
        listed = order.tolist()
        start = time.perf_counter()
        for i in range(0, len(pairs), batch_size):
            batch = order[i : i + batch_size]
            batch_texts = [texts[j] for j in listed[i : i + batch_size]]
            loss = model.loss(batch_texts, inputs(train_x, pairs[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        result["epoch_seconds"].append(time.perf_counter() - start)
        result["accuracy"].append(sum_accuracy(net, test_x, test_y, test_pairs))
        log(
            f"N={digits} epoch {epoch + 1}: {result['epoch_seconds'][-1]:.2f} s "
            f"({len(pairs)} pairs), test sum accuracy {result['accuracy'][-1]:.4f}"
        )
    with torch.no_grad():
        result["digit_accuracy"] = float((net(test_x).argmax(-1) == test_y).float().mean())
    return result


# ---------------------------------------------------------------------------- DeepProbLog
def compare_deepproblog(
    digits: int,
    data=None,
    style: str = "example",
    num_queries: int | None = None,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict:
    """Train DeepProbLog 2.1.0's own ``Model`` with its ``ExactEngine`` (cache on) on
    :data:`DEEPPROBLOG_PROGRAM` for one pass over the training pairs of :func:`train` (same
    pairs in the same order as trilay's first epoch, same network initialization, optimizer
    and batch size; the first ``num_queries`` pairs only, when given).

    ``style="example"`` writes the queries as DeepProbLog's MNIST example does
    (``addition(p0_0, p1_0, 7)`` with the images as a substitution, so one circuit per sum is
    compiled and cached); ``"per-image"`` writes the images into the query text (one circuit
    per pair). Returns ``{"seconds", "compile_seconds", "circuits", "queries",
    "seconds_per_query", "epoch_seconds_estimate", "accuracy"}``, or ``{"error": ...}`` when
    deepproblog cannot be imported (see :data:`DEEPPROBLOG_INSTALL`)."""
    try:
        from deepproblog.dataset import DataLoader, Dataset
        from deepproblog.engines import ExactEngine
        from deepproblog.model import Model as DeepProbLogModel
        from deepproblog.network import Network
        from deepproblog.query import Query
        from deepproblog.train import train_model
        from problog.logic import Constant, Term, list2term
    except ImportError as e:
        return {"error": repr(e)}
    if style not in ("example", "per-image"):
        raise ValueError(f"style must be 'example' or 'per-image', got {style!r}")

    data = data if data is not None else load_digits_split()
    train_x, train_y, test_x, test_y = data
    generator, pairs, sums, test_pairs = _split(data, digits, seed)
    order = torch.randperm(len(pairs), generator=generator)  # trilay's first epoch
    pairs, sums = pairs[order], sums[order]
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

        def to_query(self, i):  # as DeepProbLog's MNISTOperator.to_query
            images = {
                Term(f"p{k}_{j}"): image(pairs[i, k, j]) for k in range(2) for j in range(digits)
            }
            numbers = [[Term(f"p{k}_{j}") for j in range(digits)] for k in range(2)]
            args = [n[0] if digits == 1 else list2term(n) for n in numbers]
            name = "addition" if digits == 1 else "multi_addition"
            query = Term(name, *args, Constant(int(sums[i])))
            if style == "per-image":
                return Query(query.apply_term(images))
            return Query(query, images)

    net = _network(train_x[0].numel(), seed, softmax=True)
    network = Network(net, "mnist_net", batching=True)
    network.optimizer = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    model = DeepProbLogModel(DEEPPROBLOG_PROGRAM, [network], load=False)
    model.set_engine(ExactEngine(model), cache=True)
    model.add_tensor_source("train", Images())
    start = time.perf_counter()
    train_model(model, DataLoader(Pairs(), batch_size, False), 1, log_iter=10**9, verbose=0)
    seconds = time.perf_counter() - start
    circuits = list(model.solver.cache.cache_dict.values())
    return {
        "digits": digits,
        "style": style,
        "seconds": seconds,
        "compile_seconds": sum(ac.ground_time + ac.compile_time for ac in circuits),
        "circuits": len(circuits),
        "queries": len(pairs),
        "seconds_per_query": seconds / len(pairs),
        "epoch_seconds_estimate": seconds / len(pairs) * (len(train_y) // (2 * digits)),
        "accuracy": sum_accuracy(net, test_x, test_y, test_pairs),
        "network": net,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="+", default=[1, 2, 3, 4, 15])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--program", choices=sorted(PROGRAMS), default="carry")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--mnist", metavar="DIR", help="MNIST IDX files instead of load_digits")
    parser.add_argument(
        "--compare",
        action="store_true",
        help=f"also train DeepProbLog 2.1.0 for one epoch ({DEEPPROBLOG_INSTALL})",
    )
    parser.add_argument(
        "--compare-queries", type=int, help="DeepProbLog: train on this many pairs (all)"
    )
    parser.add_argument(
        "--compare-styles",
        nargs="+",
        choices=["example", "per-image"],
        default=["example", "per-image"],
        help="DeepProbLog's query styles to run",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_mnist(args.mnist) if args.mnist else load_digits_split(seed=args.seed)
    print(
        f"data: {len(data[1])} training, {len(data[3])} test images; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), load average {_load()}"
    )
    rows = []

    def report(row: str) -> None:  # printed at once too: a long comparison keeps what it has
        print(row, flush=True)
        rows.append(row)

    for digits in args.digits:
        r = train(digits, data, args.epochs, args.batch_size, args.lr, args.seed, args.program)
        mean = sum(r["epoch_seconds"]) / len(r["epoch_seconds"])
        report(
            f"trilay       N={digits}: compile {r['compile_seconds']:.2f} s "
            f"({r['circuit_nodes']} nodes, {r['circuit_layers']} layers), epoch {mean:.3f} s "
            f"({r['train_pairs']} pairs, {1000 * mean / r['train_pairs']:.2f} ms/query, first "
            f"{r['epoch_seconds'][0]:.3f} s), test sum accuracy {r['accuracy'][0]:.4f} after 1 "
            f"epoch, {r['accuracy'][-1]:.4f} after {args.epochs} ({r['test_pairs']} pairs; "
            f"digits {r['digit_accuracy']:.4f}), load {_load()}"
        )
        if not args.compare:
            continue
        for style in args.compare_styles:
            d = compare_deepproblog(
                digits, data, style, args.compare_queries, args.batch_size, args.lr, args.seed
            )
            if "error" in d:
                report(f"deepproblog  not importable ({d['error']}): {DEEPPROBLOG_INSTALL}")
                break
            full = d["queries"] == r["train_pairs"]
            epoch = d["seconds"] if full else d["epoch_seconds_estimate"]
            report(
                f"deepproblog  N={digits} ({style} queries): epoch "
                f"{'' if full else 'extrapolated to '}{epoch:.1f} s ({d['queries']} queries, "
                f"{1000 * d['seconds_per_query']:.1f} ms/query; ground + compile "
                f"{d['compile_seconds']:.1f} s of it, {d['circuits']} circuits) = "
                f"{epoch / mean:.0f}x trilay's mean epoch, "
                f"{epoch / (mean + r['compile_seconds']):.0f}x with its compile; test sum "
                f"accuracy {d['accuracy']:.4f} (trilay after 1 epoch: {r['accuracy'][0]:.4f}); "
                f"load {_load()}"
            )
    print("\n".join(["", "summary:", *rows]))


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()

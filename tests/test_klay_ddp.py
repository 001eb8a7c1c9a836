"""The KLay-compatible modules inside torch.nn.parallel.DistributedDataParallel: two CPU
processes on the gloo backend, each taking half of a batch, get the gradients that one process
computes on the whole batch (the oracle: a plain single-process backward)."""

from __future__ import annotations

import faulthandler
import os
import pathlib
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from trilay.frontends.klay import Circuit

DATA = os.path.join(os.path.dirname(__file__), "data")
BATCH, FEATURES, TIMEOUT_S = 8, 6, 120


class NeSyModel(torch.nn.Module):
    """A linear layer's logits as the literal log-weights of a probabilistic circuit (learnable
    edge weights too); the loss is the circuit's negative log-likelihood."""

    def __init__(self):
        super().__init__()
        circuit = Circuit()
        circuit.add_sdd_from_file(os.path.join(DATA, "road_r.sdd"))
        self.circuit = circuit.to_torch_module("log", probabilistic=True)
        self.net = torch.nn.Linear(FEATURES, self.circuit.num_vars)

    def forward(self, features):
        logits = self.net(features)
        log_p = self.circuit(
            torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
        )
        return -log_p[:, 0].mean()


def make_model_and_data():
    torch.manual_seed(0)
    model = NeSyModel()
    features = torch.randn(BATCH, FEATURES, generator=torch.Generator().manual_seed(1))
    return model, features


def _stacks_file(out_dir, rank: int) -> pathlib.Path:
    """Where worker ``rank`` writes its threads' stacks if it is still running near the
    deadline: the test shows them when it times out."""
    return pathlib.Path(out_dir, f"rank{rank}.stacks")


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    stacks = _stacks_file(out_dir, rank).open("w")  # noqa: SIM115 (open until the process ends)
    faulthandler.dump_traceback_later(TIMEOUT_S - 10, file=stacks)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, features = make_model_and_data()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        half = BATCH // world
        ddp(features[rank * half : (rank + 1) * half]).backward()  # DDP averages over ranks
        grads = {name: p.grad for name, p in ddp.module.named_parameters()}
        torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))
        # DDP's reducer holds the process group: free it, and tear the group down, while the
        # other rank is still alive (a rank whose DDP outlived destroy_process_group hung in
        # the group's destructor at the function's return, its peer gone, in a CI run).
        del ddp, model
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    # The one-process oracle first, on one thread as the workers run: it also compiles (or
    # loads) the CPU kernels they use, so the workers load them from the disk cache instead
    # of both compiling them at once.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, features = make_model_and_data()
        model(features).backward()
    finally:
        torch.set_num_threads(threads)
    expected = {name: p.grad for name, p in model.named_parameters()}
    context = mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                files = {rank: _stacks_file(tmp_path, rank) for rank in range(2)}
                stacks = "".join(
                    f"\n-- rank {rank} --\n" + f.read_text()
                    for rank, f in files.items()
                    if f.exists()
                )
                pytest.fail(f"the DDP workers did not finish within {TIMEOUT_S} s{stacks}")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    half, _ = make_model_and_data()
    half(features[: BATCH // 2]).backward()  # what rank 0 would have without DDP's all-reduce
    assert not torch.allclose(half.net.weight.grad, expected["net.weight"], rtol=1e-3)
    assert set(expected) == {"circuit.weights", "net.weight", "net.bias"}
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(grads) == set(expected)
        for name, grad in grads.items():
            assert expected[name].abs().sum() > 0
            torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)

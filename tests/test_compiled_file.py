"""Saved compiled circuits: the round trip, and every corruption refused at load with a
ParseError naming the problem (a bad index must never reach a kernel: on a GPU it is memory
corruption, in the interpreter a crash)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TRITON_DEVICE, brute_force, models_of_cnf, random_cnf, random_weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trilay.engine import Circuit, CompiledCircuit
from trilay.engine.errors import ParseError

CLAUSES = random_cnf(5, 4, seed=7)


@pytest.fixture(scope="module")
def saved():
    c = Circuit(5)
    c.add_cnf(CLAUSES)
    c.add_root(c.conjoin([c.literal(1), c.disjoin([c.literal(-2), c.literal(3)])]))
    compiled = c.compile()
    return compiled, _payload(compiled)


def _payload(compiled) -> dict:
    """What save() writes, read back as the dict it is."""
    import io

    buffer = io.BytesIO()
    compiled.save(buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _write(tmp_path, data, name="c.pt"):
    path = tmp_path / name
    torch.save(data, path)
    return path


def test_round_trip_evaluates_as_before(saved, tmp_path):
    compiled, data = saved
    loaded = CompiledCircuit.load(_write(tmp_path, data))
    assert loaded.row_starts == compiled.row_starts
    for name, tensor in compiled.tensors().items():
        torch.testing.assert_close(getattr(loaded, name), tensor, rtol=0, atol=0)
    p = random_weights(4, 5, 1)
    expected = brute_force(models_of_cnf(CLAUSES, 5), p, 1 - p, "real")
    torch.testing.assert_close(loaded.module("real")(p)[:, 0], expected)


def corrupt(data, field, value):
    data = copy.deepcopy(data)
    data[field] = value
    return data


def with_index(data, field, position, value):
    data = copy.deepcopy(data)
    tensor = data[field].clone()
    tensor[position] = value
    data[field] = tensor
    return data


CORRUPTIONS = {
    "a child far out of range": lambda d: with_index(d, "child", 0, 50_000_000),
    "a negative child": lambda d: with_index(d, "child", -1, -3),
    "a child in its own layer": lambda d: with_index(d, "child", -1, d["row_starts"][-1] - 1),
    "offsets not ascending": lambda d: with_index(d, "offsets", 1, d["offsets"][2] + 1),
    "offsets ending short": lambda d: with_index(d, "offsets", -1, d["offsets"][-1] - 1),
    "offsets not from 0": lambda d: with_index(d, "offsets", 0, 1),
    "too few offsets": lambda d: corrupt(d, "offsets", d["offsets"][:-1]),
    "a root out of range": lambda d: with_index(d, "roots", 0, d["row_starts"][-1]),
    "no root": lambda d: corrupt(d, "roots", d["roots"][:0]),
    "float indices": lambda d: corrupt(d, "child", d["child"].double()),
    "2-D indices": lambda d: corrupt(d, "child", d["child"][None]),
    "row starts of another variable count": lambda d: corrupt(d, "num_vars", d["num_vars"] + 1),
    "a negative variable count": lambda d: corrupt(d, "num_vars", -1),
    "a huge variable count": lambda d: corrupt(d, "num_vars", 2**62),
    "an empty layer": lambda d: corrupt(
        d, "row_starts", d["row_starts"][:2] + [d["row_starts"][1]] + d["row_starts"][2:]
    ),
    "row starts without the leaves": lambda d: corrupt(d, "row_starts", [0, *d["row_starts"][2:]]),
    "an unknown layer kind": lambda d: corrupt(d, "layer_kinds", ["xor"] * len(d["layer_kinds"])),
    "layer kinds of another count": lambda d: corrupt(d, "layer_kinds", d["layer_kinds"][1:]),
    "smooth not a bool": lambda d: corrupt(d, "smooth", "yes"),
    "a fixed variable out of range": lambda d: corrupt(d, "fixed", [(99, True)]),
    "a fixed value not a bool": lambda d: corrupt(d, "fixed", [(1, "false")]),
    "a missing field": lambda d: {k: v for k, v in d.items() if k != "roots"},
    "an unknown field": lambda d: corrupt(d, "extra", 1),
    "another format": lambda d: corrupt(d, "format", "trilay.compiled/9"),
    "not a dict": lambda d: [d],
}


@pytest.mark.parametrize("problem", sorted(CORRUPTIONS))
def test_corrupt_files_are_refused_at_load(saved, tmp_path, problem):
    _, data = saved
    path = _write(tmp_path, CORRUPTIONS[problem](data))
    with pytest.raises(ParseError, match=str(path)):
        CompiledCircuit.load(path)


def test_old_format_asks_to_recompile(saved, tmp_path):
    _, data = saved
    path = _write(tmp_path, corrupt(data, "format", "trilay.compiled/1"))
    with pytest.raises(ParseError, match="compile the circuit again"):
        CompiledCircuit.load(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ParseError, match="no such file"):
        CompiledCircuit.load(tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(ParseError, match="not a trilay compiled circuit"):
        CompiledCircuit.load(tmp_path / "text.pt")


INDEX_FIELDS = ("child", "offsets", "roots")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    field=st.sampled_from(INDEX_FIELDS),
    position=st.integers(min_value=0, max_value=10**6),
    value=st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
def test_mutated_indices_load_only_when_valid(saved, tmp_path, field, position, value):
    """Any one index changed: the file is refused with ParseError, or it is loaded, and then
    both backends evaluate it (the Triton one in the interpreter) to the same values: a value
    that passed the checks is in range, so no kernel reads out of bounds."""
    _, data = saved
    position %= data[field].numel()
    path = _write(tmp_path, with_index(data, field, position, value), "m.pt")
    try:
        loaded = CompiledCircuit.load(path)
    except ParseError:
        return
    p = random_weights(3, 5, 2)
    ref = loaded.module("real", backend="torch")(p)
    out = loaded.to(TRITON_DEVICE).module("real", backend="triton")(p.to(TRITON_DEVICE))
    torch.testing.assert_close(out.cpu(), ref, equal_nan=True)

"""The klay switch (``trilay.frontends.klay.install``): ``import klay`` served by trilay in this
process only, reversibly, saying what it replaced; and the vendored KLay test suite it runs.

Oracles: module identity (``sys.modules`` and the objects a framework-style module imported),
a two-variable circuit's probability written out by hand, the real KLay package's own module
objects (restored as they were), a separate Python process that never switches, and the
digests of KLay 0.1.2's test files taken from its sdist.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import trilay.frontends.klay as klay_api
from trilay.engine.errors import CircuitError
from trilay.frontends.klay import install, installed, is_installed, switch, uninstall, utils

UPSTREAM = Path(__file__).parent / "klay_upstream"
SHIMMED = ("klay", "klay.torch", "klay.torch.circuit_modules", "klay.torch.utils")

FRAMEWORK = """
import klay
import klay.torch
from klay.torch.utils import log1mexp


def xor_module(semiring):
    c = klay.Circuit()
    a, b = c.literal_node(1), c.literal_node(2)
    na, nb = c.literal_node(-1), c.literal_node(-2)
    c.set_root(c.or_node([c.and_node([a, nb]), c.and_node([na, b])]))
    return c.to_torch_module(semiring)
"""


@pytest.fixture
def off():
    """The switch is off before and after the test."""
    assert not is_installed()
    yield
    uninstall()


def klay_is_installed() -> bool:
    return importlib.util.find_spec("klay") is not None or "klay" in sys.modules


def test_a_framework_importing_klay_gets_trilay(off, tmp_path, monkeypatch):
    (tmp_path / "nesy_framework.py").write_text(FRAMEWORK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nesy_framework", raising=False)
    with installed():
        framework = importlib.import_module("nesy_framework")
    assert framework.klay.Circuit is klay_api.Circuit
    assert framework.klay.torch.CircuitModule is klay_api.CircuitModule
    assert framework.log1mexp is utils.log1mexp
    p = torch.tensor([[0.3, 0.8], [0.9, 0.5]], dtype=torch.float64)
    xor = p[:, 0] * (1 - p[:, 1]) + (1 - p[:, 0]) * p[:, 1]
    module = framework.xor_module("log")  # built after the switch went off: still trilay
    assert isinstance(module, klay_api.CircuitModule)
    torch.testing.assert_close(module(p.log())[:, 0].exp(), xor)
    monkeypatch.delitem(sys.modules, "nesy_framework")
    assert not getattr(sys.modules.get("klay"), "__trilay__", False)


def test_uninstall_restores_the_imported_klay(off, caplog):
    real = pytest.importorskip("klay", reason="klaycircuits is not installed")
    import klay.torch.layers  # noqa: F401  (a submodule with no trilay counterpart)

    before = {name: m for name, m in sys.modules.items() if name == "klay" or name[:5] == "klay."}
    assert not getattr(real, "__trilay__", False)
    version = importlib.metadata.version("klaycircuits")
    with caplog.at_level(logging.INFO, logger=switch.__name__):
        description = install()
    assert description in caplog.text
    assert f"replaced klaycircuits {version}'s imported modules" in description
    assert "klay.torch.layers" in description and "klay.klay_ext" in description
    assert {name: sys.modules[name].__trilay__ for name in SHIMMED} == dict.fromkeys(SHIMMED, True)
    assert not any(name in sys.modules for name in before if name not in SHIMMED)
    import klay

    assert klay.Circuit is klay_api.Circuit
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("klay.torch.layers")  # not KLay's: nothing beneath trilay's
    assert install() == description  # installing again changes nothing
    assert "restored klay" in uninstall()
    after = {name: m for name, m in sys.modules.items() if name == "klay" or name[:5] == "klay."}
    assert after == before  # the same module objects
    assert importlib.import_module("klay") is real


def test_install_says_what_it_shadows(off, monkeypatch):
    """Not imported yet: the installed klaycircuits is shadowed; not installed: it says so."""
    for name in [n for n in sys.modules if n == "klay" or n.startswith("klay.")]:
        monkeypatch.delitem(sys.modules, name)
    if klay_is_installed():
        version = importlib.metadata.version("klaycircuits")
        assert f"shadows klaycircuits {version} (" in install()
        uninstall()
        assert "klay" not in sys.modules
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    assert "No klaycircuits is installed" in install()
    assert "nothing to undo" not in uninstall()
    assert "nothing to undo" in uninstall()


def test_installed_nests_and_switches_back(off):
    with installed() as outer:
        with installed() as inner:
            assert inner == outer and is_installed()
        assert is_installed()  # the inner block did not switch off what it found on
        import klay

        assert klay.__trilay__
    assert not is_installed() and not getattr(sys.modules.get("klay"), "__trilay__", False)
    with pytest.raises(RuntimeError), installed():
        raise RuntimeError("the block fails")
    assert not is_installed()


def test_what_trilay_does_not_serve(off):
    with installed():
        import klay

        for name in ("klay.jax", "klay.torch.layers", "klay.klay_ext"):
            with pytest.raises(ModuleNotFoundError):
                importlib.import_module(name)
        with pytest.raises(AttributeError, match="trilay's stand-in"):
            klay.to_jax_function  # noqa: B018
        assert sorted(klay.__all__) == sorted(klay_api.circuit.__all__)
        for name in klay.__all__:
            assert getattr(klay, name) is getattr(klay_api, name)


def test_a_process_that_never_switches_is_unaffected():
    """Importing trilay (the KLay API included) does not touch ``import klay``."""
    code = textwrap.dedent(
        """
        import trilay.frontends.klay, trilay.frontends
        try:
            import klay
        except ModuleNotFoundError:
            print("absent")
        else:
            print(getattr(klay, "__trilay__", False), klay.__spec__.origin)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    if klay_is_installed():
        assert out == ["False", importlib.util.find_spec("klay").origin]
    else:
        assert out == ["absent"]


def test_vendored_upstream_tests_are_unmodified():
    """The files under tests/klay_upstream are KLay 0.1.2's (digests from its sdist), and every
    Python file there but trilay's conftest.py is one of them."""
    sums = dict(
        reversed(line.split()) for line in (UPSTREAM / "SHA256SUMS").read_text().splitlines()
    )
    assert set(sums) == {p.name for p in UPSTREAM.glob("*.py")} - {"conftest.py"}
    for name, digest in sums.items():
        assert hashlib.sha256((UPSTREAM / name).read_bytes()).hexdigest() == digest
    assert "Apache License" in (UPSTREAM / "LICENSE").read_text()


# ---------------------------------------------------------------------------- klay.torch.utils
def test_utils():
    x = torch.tensor([-1e-10, -0.01, -0.6931, -0.7, -1.0, -30.0, -1000.0], dtype=torch.float64)
    torch.testing.assert_close(utils.log1mexp(x), torch.log(-torch.expm1(x)))
    assert utils.log1mexp(torch.tensor(0.0)) == -torch.inf  # exact: KLay's eps gives -27.6
    with pytest.warns(UserWarning, match="eps"):
        utils.log1mexp(x, 1e-12)
    torch.testing.assert_close(utils.negate_real(x, 0.5), 1 - x)
    offsets = torch.tensor([0, 2, 2, 5, 6])
    expected = np.repeat(np.arange(4), np.diff(offsets.numpy()))
    assert utils.unroll_ixs(offsets).tolist() == expected.tolist()
    assert utils.CUTOFF == pytest.approx(-np.log(2))


# ---------------------------------------------------------------------------- KLay's constructor
def test_modules_take_klays_layer_arrays():
    """``CircuitModule(ixs_in, ixs_out, semiring)``, as KLay's ``to_torch_module`` builds it:
    the same module as ``to_torch_module``; malformed arrays are refused."""
    c = klay_api.Circuit()
    a, b = c.literal_node(1), c.literal_node(-3)
    c.set_root(c.or_node([c.and_node([a, b]), c.literal_node(2)]))
    ixs_in, ixs_out = c._get_indices()
    x = torch.rand(4, 3, dtype=torch.float64)
    expected = c.to_torch_module("real")(x)
    module = klay_api.CircuitModule(ixs_in, ixs_out, "real")
    torch.testing.assert_close(module(x), expected)
    assert module.num_vars == 3
    tensors = [torch.as_tensor(i) for i in ixs_in], [torch.as_tensor(o) for o in ixs_out]
    torch.testing.assert_close(klay_api.CircuitModule(*tensors, "real")(x), expected)
    bad = {
        "one ixs_in and one ixs_out array per layer": (ixs_in[:-1], ixs_out),
        "must run from 0": (ixs_in, [ixs_out[0] + 1, *ixs_out[1:]]),
        "not ascending": (ixs_in, [np.array([0, 3, 1, 3]), *ixs_out[1:]]),
        "outside the layer below": (ixs_in[:1] + [ixs_in[1] + 5] + ixs_in[2:], ixs_out),
        "1-D integer array": ([np.asarray(ixs_in[0], float), *ixs_in[1:]], ixs_out),
    }
    for message, (ins, outs) in bad.items():
        with pytest.raises(CircuitError, match=message):
            klay_api.CircuitModule(ins, outs, "real")
    with pytest.raises(CircuitError, match="reads variable 3"):
        klay_api.CircuitModule(ixs_in, ixs_out, "real", num_vars=2)

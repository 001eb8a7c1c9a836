"""The switch: ``import klay`` served by trilay, in this process, until switched back.

Frameworks that import KLay themselves (DeepLog does ``import klay``) run on trilay after::

    from trilay.frontends.klay import install
    install()  # returns (and logs) what it replaced

:func:`install` puts modules named ``klay``, ``klay.torch``, ``klay.torch.circuit_modules``
and ``klay.torch.utils`` into :data:`sys.modules`, holding trilay's objects under KLay's names;
KLay's modules already imported are taken out and kept. :func:`uninstall` puts everything back;
:func:`installed` is the switch as a context manager. Nothing is written to disk and an
installed ``klaycircuits`` is left as it is: a process that never calls :func:`install` is not
affected, and a new process starts with KLay again. Code that took objects from KLay before
the switch (``from klay import Circuit`` at import time) keeps KLay's: switch first.

KLay's other modules (``klay.jax``, ``klay.torch.layers``, the extension ``klay.klay_ext``)
have no trilay counterpart: importing them while the switch is on raises
:class:`ModuleNotFoundError`.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import sys
import threading
import types
from collections.abc import Iterator

from . import circuit, modules, utils

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict = {}  # while installed: "saved" (KLay's modules taken out), "description"


def _module(name: str, doc: str, **members) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin="trilay")
    module.__dict__.update(members)
    module.__trilay__ = True

    def __getattr__(attr: str):
        raise AttributeError(
            f"module {name!r} is trilay's stand-in for KLay (trilay.frontends.klay.install) and "
            f"has no {attr!r}"
        )

    module.__getattr__ = __getattr__
    return module


def _modules() -> dict[str, types.ModuleType]:
    """Fresh stand-ins for KLay's modules, holding trilay's objects."""
    torch_members = {
        "CircuitModule": modules.CircuitModule,
        "ProbabilisticCircuitModule": modules.ProbabilisticCircuitModule,
    }
    utils_module = _module(
        "klay.torch.utils",
        "trilay's KLay torch utilities (trilay.frontends.klay.utils).",
        **{name: getattr(utils, name) for name in utils.__all__},
    )
    circuit_modules = _module(
        "klay.torch.circuit_modules",
        "trilay's KLay torch modules (trilay.frontends.klay.modules).",
        **torch_members,
    )
    torch_module = _module(
        "klay.torch",
        "trilay's KLay torch modules (trilay.frontends.klay.modules).",
        utils=utils_module,
        circuit_modules=circuit_modules,
        __all__=list(torch_members),
        **torch_members,
    )
    klay_members = {name: getattr(circuit, name) for name in circuit.__all__}
    klay = _module(
        "klay",
        "trilay's KLay API (trilay.frontends.klay), installed by trilay.frontends.klay.install().",
        torch=torch_module,
        __all__=list(klay_members),
        **klay_members,
    )
    return {m.__name__: m for m in (klay, torch_module, circuit_modules, utils_module)}


def _is_klay(name: str) -> bool:
    return name == "klay" or name.startswith("klay.")


def is_installed() -> bool:
    """Whether ``import klay`` gives trilay now."""
    return bool(_state)


def install() -> str:
    """Make ``import klay`` (and ``klay.torch``, ``klay.torch.circuit_modules``,
    ``klay.torch.utils``) give trilay's KLay API in this process.

    Returns the description of what it did (also logged at INFO on this module's logger): the
    modules it serves and what it replaced (KLay's modules already imported, or the installed
    ``klaycircuits`` it shadows). Calling it again while installed changes nothing and returns
    the same description.
    """
    with _lock:
        if _state:
            return _state["description"]
        spec = importlib.util.find_spec("klay") if "klay" not in sys.modules else None
        saved = {name: sys.modules.pop(name) for name in list(sys.modules) if _is_klay(name)}
        shims = _modules()
        sys.modules.update(shims)
        description = f"`import klay` now gives trilay in this process: {', '.join(shims)}."
        if saved:
            description += (
                f" It replaced {_klaycircuits()}'s imported modules {', '.join(sorted(saved))}"
                " (uninstall() restores them; objects taken from them before this call stay"
                " KLay's)."
            )
        elif spec is not None:
            description += f" It shadows {_klaycircuits()} ({spec.origin}) until uninstall()."
        else:
            description += " No klaycircuits is installed; uninstall() switches back."
        _state.update(saved=saved, shims=shims, description=description)
        logger.info(description)
        return description


def uninstall() -> str:
    """Switch ``import klay`` back to what it was before :func:`install` (KLay's modules that
    were imported are restored; otherwise the next ``import klay`` imports KLay, if installed).
    Returns (and logs) what it did; without a switch installed it does nothing."""
    with _lock:
        if not _state:
            return "trilay's klay switch is not installed: nothing to undo."
        for name, shim in _state["shims"].items():
            if sys.modules.get(name) is shim:
                del sys.modules[name]
        sys.modules.update(_state["saved"])
        restored = sorted(_state["saved"])
        _state.clear()
        description = "`import klay` no longer gives trilay" + (
            f"; restored {', '.join(restored)}." if restored else "."
        )
        logger.info(description)
        return description


@contextlib.contextmanager
def installed() -> Iterator[str]:
    """:func:`install` for the ``with`` block, then back to the state before it (a switch that
    was already on stays on). Yields :func:`install`'s description."""
    was_on = is_installed()
    description = install()
    try:
        yield description
    finally:
        if not was_on:
            uninstall()


def _klaycircuits() -> str:
    try:
        return f"klaycircuits {importlib.metadata.version('klaycircuits')}"
    except importlib.metadata.PackageNotFoundError:
        return "KLay"


__all__ = ["install", "uninstall", "installed", "is_installed"]

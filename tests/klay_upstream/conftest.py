"""Runs KLay 0.1.2's own tests (vendored unmodified, see README.md) against trilay.

Every module here is imported, and every test runs, with trilay's klay switch on
(:func:`trilay.frontends.klay.installed`), so their ``import klay`` gives trilay; outside them
the switch is off, and the parity tests elsewhere import the real KLay. The upstream tests
write scratch files into the working directory: each runs in its own temporary one.
"""

import pytest
from trilay.frontends.klay import installed


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    with installed():
        return (yield)


@pytest.fixture(autouse=True)
def klay_is_trilay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with installed():
        yield

"""The Active Directory fixture: one real Samba AD DC for the whole session.

``samba_dc`` (session scope) is a :class:`tests.support.samba_dc.SambaDC`, started once and
stopped at the end. The tests skip, with the reason, only when this machine cannot create a
network namespace; any other failure to start the DC is an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.samba_dc import SambaDC, netns_available

TIMINGS = pytest.StashKey[dict[str, float]]()


@pytest.fixture(scope="session")
def samba_dc(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[SambaDC]:
    available, reason = netns_available()
    if not available:
        pytest.skip(f"the Samba AD DC needs a network namespace: {reason}")
    with SambaDC(tmp_path_factory.mktemp("samba-dc")) as dc:
        dc.start()
        pytestconfig.stash[TIMINGS] = dc.timings
        yield dc


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    timings = config.stash.get(TIMINGS, None)
    if timings:
        words = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items())
        terminalreporter.write_line(f"Samba AD DC: {words}")

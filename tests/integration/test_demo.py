"""The README's demo command runs end to end."""

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect")]


def test_demo_provisions_the_sample_people(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo starts its own slapd and SCIM server, syncs through Prefect and exits 0."""
    from tests.support.demo import main

    assert main(["--users", "10"]) == 0
    out = capsys.readouterr().out
    assert "9 created, 4 groups created, 9 members added; every user and group in" in out
    assert "Users now in the SCIM application (9)" in out  # the tenth person is locked
    assert "Groups now in the SCIM application (4)" in out


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_demo_keep_stops_its_servers_on_sigterm() -> None:
    """``--keep`` left slapd, gunicorn and Prefect's temporary server running after SIGTERM
    (only Ctrl-C stopped them): SIGTERM now stops every process the demo started."""
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    demo = subprocess.Popen(
        [sys.executable, "-m", "tests.support.demo", "--users", "3", "--keep"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    output: list[str] = []

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            if "Servers running" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(180), "".join(output)
        started = _descendants(demo.pid)
        assert len(started) >= 2, started  # slapd, gunicorn (and Prefect's server)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if _alive(p)], "".join(output)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        reader.join(10)
        assert demo.stdout is not None
        demo.stdout.close()

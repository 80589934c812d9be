"""Child processes for the operator's scripts and the test lab: start a server in its own
process group with its output in a log file, wait until it answers, stop it (and its group);
run a command; find free 127.0.0.1 ports.

The Prefect server launcher (:mod:`deployments.prefect_server`) and the test servers
(:mod:`tests.support.servers`) share these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
LOG_TAIL_LINES = 30


def answers_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url`` answers 200 within ``timeout`` seconds (a server's readiness probe)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run(
    command: list[str],
    *,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> str:
    """Run a command and return its output; raise RuntimeError with its errors when it fails."""
    result = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        message = result.stderr.strip() or result.stdout.strip()
        name = Path(command[0]).name
        raise RuntimeError(f"{name} failed with status {result.returncode}: {message}")
    return result.stdout


def command_line(*words: str | Path, options: Mapping[str, str | Path]) -> list[str]:
    """Return a command line: the words, then each option followed by its value."""
    pairs = (item for option, value in options.items() for item in (option, value))
    return [str(word) for word in (*words, *pairs)]


def log_tail(log_path: Path) -> str:
    """Return the last lines of a log file, or a note when it is empty."""
    if not log_path.exists():
        return "(no log)"
    lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines) or "(empty log)"


@dataclass
class Child:
    """A server running as a child process in its own process group, its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path

    @classmethod
    def spawn(
        cls,
        name: str,
        command: list[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Child:
        """Start a server, its output appended to a log file."""
        log = log_path.open("ab")
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        return cls(name, process, log, log_path)

    def wait_until_ready(self, ready: Callable[[], bool]) -> None:
        """Wait until the server answers; if it does not, halt it and raise RuntimeError."""
        try:
            self._poll(ready)
        except BaseException:
            self.halt(signal.SIGKILL)
            raise

    def _poll(self, ready: Callable[[], bool]) -> None:
        """Wait until the server answers; raise RuntimeError, with its log tail, if it does not."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.process.returncode}:\n"
                    f"{log_tail(self.log_path)}"
                )
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} did not answer within {START_TIMEOUT:.0f} s:\n{log_tail(self.log_path)}"
        )

    def halt(self, stop_signal: signal.Signals) -> None:
        """Send ``stop_signal``, SIGKILL if the server lingers, SIGKILL its group, close the log."""
        if self.process.poll() is None:
            self.process.send_signal(stop_signal)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def free_ports(count: int) -> list[int]:
    """Return distinct TCP ports that are free on 127.0.0.1."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1."""
    return free_ports(1)[0]

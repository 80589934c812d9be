"""A TCP forwarding proxy for tests that fires an action once after N bytes from the server.

Hand-written because it is a test tool: nothing real restarts a directory on cue. The real
slapd stays behind it (TLS included: the bytes are forwarded as they are, so the client
verifies slapd's own certificate). Once ``after_bytes`` bytes have come from the server (over
all connections), the proxy stops forwarding, calls ``action`` (for example the Slapd
fixture's ``restart``, which drops every connection on slapd's side) and closes the client's
connection: the client sees the server go away in the middle of whatever it was reading. After
that it forwards everything, so a reconnecting client reaches the restarted server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class TcpProxy:
    """Listens on a free 127.0.0.1 port and forwards every connection to ``upstream``."""

    def __init__(
        self, upstream: tuple[str, int], *, after_bytes: int, action: Callable[[], None]
    ) -> None:
        self.upstream = upstream
        self.after_bytes = after_bytes
        self.action = action
        self.from_server = 0
        """Bytes received from the server so far, over all connections."""
        self.connections = 0
        self.fired_at: int | None = None
        """``from_server`` when the action fired (``None`` until it did)."""
        self.fired = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self.connections += 1
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_server and self._count(len(data)):
                    self.action()
                    self.fired.set()
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)

    def _count(self, size: int) -> bool:
        """Count bytes from the server; whether the action must fire now."""
        with self._lock:
            self.from_server += size
            if self.fired_at is None and self.from_server >= self.after_bytes:
                self.fired_at = self.from_server
                return True
            return False


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()

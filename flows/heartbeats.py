"""Flow-run heartbeats that stop the moment the run ends.

A flow run on a Prefect server sends a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds (180 by default) so that the server can mark a run whose process died as crashed.
Prefect 3.9's heartbeat thread sleeps in 1-second steps and looks at its stop signal between
them, and the run waits for that thread at its end: up to a second added to every flow run
(cProfile of a no-change sync cycle on a running server: 0.85 s of its 1.09 s were that wait).

:func:`install` puts the same heartbeats in place — the same event built by the same engine
methods, the same frequency setting, sent over the same span of the run — from a thread that
waits on its stop signal instead of sleeping, so the run ends when its work does. Runs with
heartbeats switched off (the setting unset, as on the command's temporary server) have none,
as before.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any


@contextmanager
def heartbeats(engine: Any, join_on_exit: bool = True) -> Generator[None, None, None]:
    """Send ``engine``'s flow-run heartbeats while the block runs; stop at once at its end.

    ``engine``: Prefect's flow-run engine (what ``prefect.flow_engine`` passes to its own
    heartbeat context); ``join_on_exit``: wait for the thread to finish (the async engine
    does not, to keep its event loop free)."""
    seconds = engine.heartbeat_seconds  # None: heartbeats are off
    if seconds is None:
        yield
        return
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            run = engine.flow_run
            if run is not None and run.state is not None and run.state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # a heartbeat is never worth failing a run for
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            stop.wait(seconds)

    # the thread sees the run's settings (the API URL), as Prefect's own heartbeat thread does
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(beat,), daemon=True, name="heartbeats"
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=2)


def install() -> None:
    """Use :func:`heartbeats` for every flow run of this process (once; idempotent).

    Only where Prefect's engine has the heartbeat context and the engine methods this module
    relies on, as Prefect 3.9 does; with another engine Prefect's own heartbeats stay (slower
    to stop, never missing), and test_heartbeats says so."""
    from prefect import flow_engine

    engine = getattr(flow_engine, "FlowRunEngine", None)
    current = getattr(flow_engine, "_send_heartbeats", None)
    if current is None or current is heartbeats or engine is None:
        return
    needed = ("heartbeat_seconds", "_build_heartbeat_event_template", "_emit_flow_run_heartbeat")
    if not all(hasattr(engine, name) for name in needed):
        return
    if list(inspect.signature(current).parameters) != ["engine", "join_on_exit"]:
        return
    flow_engine._send_heartbeats = heartbeats

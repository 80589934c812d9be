"""How long the persisted results of a run's cached tasks are kept.

Two tasks persist what they return, so that a failed flow run, retried, reuses them: the
directory read (`extract-from-LDAP`, its group counterpart: the users' and groups' mapped
attributes, names, mail addresses) and the target's discovery. Prefect never deletes a persisted
result, so every run left its read on the disk for good: 16.7 MB for a full pass over 47,500
users, once a run, identity data kept in the clear long after the run that needed it.

Here they are kept only while they can serve a retry: each run's results go to one folder of
the result storage (:data:`RUN_SCOPED`, the same cache key as ``INPUTS + TASK_SOURCE + RUN_ID``
but the run's id as a folder). When the run ends (:func:`kept_for_retry`), the folder is deleted
unless a retry could help (a write failed, a target was not reached, the run raised), and any
run's folder untouched for ``state.results_retention_days`` is deleted too; a run touches its
own folder when it starts and when it keeps it, so the retention counts from its last attempt
and a folder in use is never taken. Only a result storage on this machine's disk (Prefect's
default, or ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``) is cleaned; a remote one (an S3 block as the
server's default) is left to its own lifecycle rules. Not covered: the exception a cached task
finally fails with, which Prefect persists under a random name at the storage's top level.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE, CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.filesystems import LocalFileSystem

from tasks.logs import run_logger

RUNS_FOLDER = "scim-provisioner-runs"
"""The folder of the result storage that holds one folder per flow run."""


@dataclass
class RunScoped(CachePolicy):
    """``INPUTS + TASK_SOURCE + RUN_ID`` with the run's results under one folder: the key is
    ``scim-provisioner-runs/<flow run id>/<hash of the inputs and the task's source>``."""

    within: CachePolicy = field(default_factory=lambda: INPUTS + TASK_SOURCE)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        run = RUN_ID.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        key = self.within.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if run is None:
            return None
        # no key of the inputs: never a cache hit, but still in the run's folder
        return f"{RUNS_FOLDER}/{run}/{key or uuid.uuid4().hex}"

    def __sub__(self, other: str) -> CachePolicy:
        """``RUN_SCOPED - "name"``: the same, without that input in the key."""
        return replace(self, within=self.within - other)


RUN_SCOPED = RunScoped()


def local_runs_folder() -> Path | None:
    """Where this flow run's result storage keeps the runs' folders, when it is on this
    machine's disk; ``None`` outside a flow run or for a remote storage."""
    context = FlowRunContext.get()
    if context is None:
        return None
    storage = context.result_store.result_storage
    if not isinstance(storage, LocalFileSystem):
        return None
    return Path(storage.basepath or ".").expanduser().resolve() / RUNS_FOLDER


def this_run() -> str | None:
    """The id of the flow run this code runs in, if any."""
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context is not None and context.flow_run else None


@dataclass
class Outcome:
    """What the end of a run decides about its persisted results."""

    keep: bool = True
    """Keep them for a retry (the default: a run that raises may be retried)."""


@contextmanager
def kept_for_retry(retention_days: int) -> Iterator[Outcome]:
    """Around a flow's work: the run's persisted results are kept at its end only when its
    :class:`Outcome` says so (the flow sets ``keep``); see the module's description."""
    _touch_own_folder()
    outcome = Outcome()
    try:
        yield outcome
    finally:
        if outcome.keep:
            _touch_own_folder()
        forget_results(outcome.keep, retention_days)


def _touch_own_folder() -> None:
    folder, run = local_runs_folder(), this_run()
    if folder is not None and run is not None:
        with suppress(OSError):  # nothing persisted yet
            os.utime(folder / run)


def forget_results(keep: bool, retention_days: int) -> None:
    """Delete this run's persisted results unless ``keep``, and the folders of other runs
    untouched for ``retention_days``. A folder that cannot be deleted is logged, never raised:
    the run's outcome stands."""
    folder, own = local_runs_folder(), this_run()
    if folder is None or own is None or not folder.is_dir():
        return
    oldest = time.time() - retention_days * 86_400
    for run in folder.iterdir():
        try:
            expired = run.stat().st_mtime < oldest
        except OSError:
            continue  # deleted meanwhile by a run ending at the same time
        if (run.name == own and not keep) or (run.name != own and expired):
            try:
                if run.is_dir():
                    shutil.rmtree(run)
                else:
                    run.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                run_logger().warning("persisted results of run %s not deleted: %s", run.name, exc)

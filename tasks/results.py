"""How long the persisted results of a run's cached tasks are kept.

Two tasks persist what they return, so that a failed flow run, retried, reuses them: the
directory read (`extract-from-LDAP`, its group counterpart: the users' and groups' mapped
attributes, names, mail addresses) and the target's discovery. Prefect never deletes a persisted
result, so every run left its read on the disk for good: 16.7 MB for a full pass over 47,500
users, once a run, identity data kept in the clear long after the run that needed it.

Here they are kept only while they can serve a retry: each run's results go to one folder of
the result storage (:data:`RUN_SCOPED`, the same cache key as ``INPUTS + TASK_SOURCE + RUN_ID``
but the run's id as a folder), the folder is deleted when the run ends with everything in step
(a completed run is not retried), and a failed run's folder once it is older than
``state.results_retention_days``, by the next run to end. Only a result storage on this
machine's disk (Prefect's default, or ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``) is cleaned; a
remote one (an S3 block as the server's default) is left to its own lifecycle rules.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
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
        if run is None or key is None:
            return None
        return f"{RUNS_FOLDER}/{run}/{key}"


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


def forget_results(completed: bool, retention_days: int) -> list[str]:
    """At the end of a flow run: delete its persisted results when it ``completed`` (nothing
    will read them again), and the folders of earlier runs older than ``retention_days``
    (failed runs that were not retried in time). Returns the run ids whose folders were
    deleted. A folder that cannot be deleted is logged, never raised: the run's outcome
    stands."""
    folder = local_runs_folder()
    context = FlowRunContext.get()
    if folder is None or context is None or context.flow_run is None or not folder.is_dir():
        return []
    this_run = str(context.flow_run.id)
    oldest = time.time() - retention_days * 86_400
    deleted: list[str] = []
    for run in folder.iterdir():
        try:
            expired = run.stat().st_mtime < oldest
        except OSError:
            continue  # deleted meanwhile by a run ending at the same time
        if (run.name == this_run and completed) or (run.name != this_run and expired):
            try:
                if run.is_dir():
                    shutil.rmtree(run)
                else:
                    run.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                run_logger().warning("persisted results of run %s not deleted: %s", run.name, exc)
                continue
            deleted.append(run.name)
    return deleted

"""The logger of the current Prefect run, or the package's logger outside a run (``plan``
runs the same steps as ``sync`` without a flow run)."""

from __future__ import annotations

import logging
from typing import Any


def run_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    # imported here: reading the directory needs no Prefect (a sync reads it while Prefect
    # loads, flows/launch.py); once Prefect is loaded this costs a dictionary look-up
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("scim_provisioner")

"""The logger of the current Prefect run, or the package's logger outside a run (``plan``
runs the same steps as ``sync`` without a flow run)."""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def run_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("scim_provisioner")

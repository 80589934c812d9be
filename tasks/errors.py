"""One error taxonomy for the whole provisioner.

Every failure ends up as one of three outcomes, and this module decides which::

    ProvisionerError
    ├── ConfigError          stop the run: the configuration is invalid
    ├── SourceError          the directory failed (bind, search, TLS)
    │   └── SourceUnavailable    transient: the task is retried
    └── ScimError            the SCIM target answered badly
        ├── TransientError       retry with backoff (network, timeout, 429, 5xx but 501)
        ├── RejectedError        skip this user and report it (4xx, 501)
        │   ├── ConflictError        409: look the user up and adopt it
        │   ├── NotFoundError        404: the resource is gone
        │   └── PreconditionFailed   412: changed on the target; re-read and re-plan
        └── FatalError           stop the run (401/403, unusable target, a redirected write)
            └── TargetUnreachable    the run's first request to the target failed

Messages never contain secrets: the transport builds them from the status, the target's
error detail and the request's method and path only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

PATCH_REFUSED = (405, 501)
"""Answers to a PATCH meaning the target does not do PATCH at all, whatever it advertised:
the loaders switch to PUT for the rest of the run."""


class ProvisionerError(Exception):
    """Base class of the provisioner's errors."""


class ConfigError(ProvisionerError):
    """The configuration is invalid; nothing can run until it is fixed."""


class SourceError(ProvisionerError):
    """The directory refused or failed a request."""


class SourceUnavailable(SourceError):
    """The directory could not be reached; retrying later may succeed."""


class ScimError(ProvisionerError):
    """A SCIM request failed.

    :param status: the HTTP status, or ``None`` when no response arrived.
    :param detail: the target's own words (SCIM ``detail``), or a description of the failure.
    :param scim_type: the SCIM ``scimType`` when the target gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str = "",
        scim_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type


class TransientError(ScimError):
    """Worth retrying: network failure, timeout, 429 or 5xx.

    :param retry_after: seconds the target asked us to wait (``Retry-After``), if any.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class RejectedError(ScimError):
    """The target refused this one request (4xx); other users go on."""


class ConflictError(RejectedError):
    """409: the resource already exists on the target."""


class NotFoundError(RejectedError):
    """404: the resource does not exist on the target."""


class PreconditionFailed(RejectedError):
    """412: the resource changed on the target since we read it (ETag mismatch)."""


class FatalError(ScimError):
    """Nothing more can succeed in this run (authentication, authorisation, unusable target)."""


class TargetUnreachable(FatalError):
    """The run could not prove the target reachable and accepting its credentials, so it says
    nothing about the target (never "in step")."""


TARGET_TEXT_LIMIT = 2000
"""The most of a target's own words (an error detail) kept or shown anywhere: messages, the
audit log, the summary. A 20 MB ``detail`` must not fill the state store or the terminal."""


def error_detail(body: bytes, limit: int = 300) -> tuple[str, str | None]:
    """Return the human-readable detail and the ``scimType`` of an error body.

    Understands SCIM 2.0 (``detail``/``scimType``) and SCIM 1.1 (``Errors[].description``)
    bodies, whose detail is cut at :data:`TARGET_TEXT_LIMIT` characters; anything else (an
    HTML error page, garbage) is shortened to ``limit`` characters.
    """
    text = body.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return (shorten(text, limit) or "(empty body)"), None
    if isinstance(doc, dict):
        if "detail" in doc or "scimType" in doc:
            scim_type = doc.get("scimType")
            kind = None if scim_type is None else shorten(str(scim_type), 100)
            return shorten(str(doc.get("detail", ""))), kind
        errors = doc.get("Errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return shorten(str(errors[0].get("description", ""))), None
    return shorten(text, limit), None


def shorten(text: str, limit: int = TARGET_TEXT_LIMIT) -> str:
    """``text`` on one line, cut at ``limit`` characters (an ellipsis and the full length)."""
    if len(text) > 4 * limit:  # never split or join megabytes to show a few kilobytes
        text = text[: 4 * limit]
        cut = True
    else:
        cut = False
    text = " ".join(text.split())
    if len(text) <= limit and not cut:
        return text
    return text[: limit - 1] + "…"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; ``None`` when absent or unusable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())


def classify_response(status: int, body: bytes, headers: dict[str, str], what: str) -> ScimError:
    """Turn an unsuccessful HTTP answer into the error that says what to do next."""
    detail, scim_type = error_detail(body)
    message = f"{what} failed: HTTP {status}" + (f": {detail}" if detail else "")
    if status == 429 or (status >= 500 and status != 501):  # 501: not implemented, for good
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return TransientError(
            message, status=status, detail=detail, scim_type=scim_type, retry_after=retry_after
        )
    if status in (401, 403):
        return FatalError(message, status=status, detail=detail, scim_type=scim_type)
    if status == 409:
        return ConflictError(message, status=status, detail=detail, scim_type=scim_type)
    if status == 404:
        return NotFoundError(message, status=status, detail=detail, scim_type=scim_type)
    if status == 412:
        return PreconditionFailed(message, status=status, detail=detail, scim_type=scim_type)
    return RejectedError(message, status=status, detail=detail, scim_type=scim_type)


def retry_on(*errors: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A Prefect ``retry_condition_fn``: retry a task only when it failed with one of these."""

    def condition(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except errors:
            return True
        except Exception:
            return False
        return False

    return condition

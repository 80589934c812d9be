"""Load: carry out a plan's actions on a SCIM target and record each confirmed one.

A batch of actions runs on a few threads (the target's ``concurrency``); each outcome is written
to the state store as soon as the target confirmed it, from the calling thread. A rejected user is
reported and the others go on; a fatal error (authentication) stops the batch after recording
what was already confirmed. Batches may overlap (:meth:`Loader.shared_threads`): they then share
the ``concurrency`` threads, and a fatal error stops the other batch too.

Creating is idempotent: the user is looked up by the configured filter first and adopted if it
exists; a 409 also leads to a look-up and adoption; after a lost response the next attempt looks
up again instead of sending a second POST.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import TargetConfig
from tasks.errors import (
    PATCH_REFUSED,
    ConfigError,
    ConflictError,
    FatalError,
    NotFoundError,
    PreconditionFailed,
    RejectedError,
    ScimError,
    TransientError,
    shorten,
)
from tasks.scim.client import ScimClient, etag_of
from tasks.scim.dialect import Capabilities, name_key
from tasks.state.store import AuditEntry, StateRecord, StateStore
from tasks.sync.plan import Action
from tasks.sync.transform import content_hash

log = logging.getLogger(__name__)

PREFETCH_MIN_CREATES = 50
"""Below this many creates, one look-up per create is cheap enough."""
LIST_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one action."""

    action: Action
    ok: bool
    detail: str = ""
    scim_id: str | None = None
    adopted: bool = False
    version: str | None = None


def lookup_value(payload: dict[str, Any], attribute: str) -> str | None:
    """The desired value of the matching attribute (``emails`` means the primary email)."""
    node: Any = payload
    for part in attribute.split("."):
        if isinstance(node, list):
            primary = [e for e in node if isinstance(e, dict) and e.get("primary")] or node
            node = primary[0] if primary else None
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, list) and node:
        node = node[0].get("value") if isinstance(node[0], dict) else node[0]
    return str(node) if node not in (None, "") else None


def adoption_refused(
    target: TargetConfig, existing: dict[str, Any], payload: dict[str, Any]
) -> str | None:
    """Why an account already on the target must not be taken over for this directory user,
    or ``None`` when it may be.

    ``protected_accounts`` (shell patterns on the account's userName, any case) are never
    adopted; ``adopt_existing: never`` adopts nothing; ``verified`` adopts only an account
    whose externalId, or primary email, equals the directory user's (the userName alone can
    be a service account that merely shares the name); ``on_match`` adopts what the matching
    filter found.
    """
    name = str(existing.get("userName") or existing.get("id"))
    for pattern in target.protected_accounts:
        if fnmatch.fnmatchcase(name.casefold(), pattern.casefold()):
            return (
                f"the target's account {name!r} is protected (protected_accounts: {pattern!r}); "
                "not adopted, not changed"
            )
    policy = target.adopt_existing
    if policy == "never":
        return (
            f"an account {name!r} already exists on the target and adopt_existing is never; "
            "not adopted, not changed"
        )
    if policy == "verified":
        ours, theirs = payload.get("externalId"), existing.get("externalId")
        if ours and ours == theirs:
            return None
        mine = lookup_value(payload, "emails.value")
        other = lookup_value(existing, "emails.value")
        if mine and other and mine.casefold() == other.casefold():
            return None
        return (
            f"an account {name!r} already exists on the target, but neither its externalId nor "
            "its email is this user's (adopt_existing: verified); not adopted, not changed"
        )
    return None


class PatchSwitch:
    """PATCH or PUT for one kind of change on one target, shared by a loader's threads: a
    target that advertised PATCH but answers it 405 or 501 (:data:`PATCH_REFUSED`) gets PUT
    for the rest of the run, said once in the log and in :attr:`notes` (the run's summary)."""

    def __init__(self, on: bool, target: str, changes: str) -> None:
        self.on = on
        self.target = target
        self.changes = changes
        self.notes: list[str] = []
        self._lock = threading.Lock()

    def refused(self, exc: RejectedError) -> None:
        with self._lock:
            if not self.on:
                return
            self.on = False
            note = (
                f"the target answered PATCH with HTTP {exc.status} although it advertises "
                f"PATCH: {self.changes} went as PUT for the rest of the run"
            )
            self.notes.append(note)
        log.warning("target %s: %s", self.target, note)


class Loader:
    """Carries out actions on one target; safe to call from several threads."""

    def __init__(
        self,
        client: ScimClient,
        *,
        use_patch: bool,
        managed_ids: Iterable[str] = (),
        bulk: Capabilities | None = None,
        etag: bool = False,
        filtering: bool = True,
        capabilities: Capabilities | None = None,
    ) -> None:
        """:param managed_ids: SCIM ids the state store already links to directory entries.
        :param bulk: the target's capabilities when changes may go in Bulk requests.
        :param etag: the target has ETags: updates carry If-Match, a 412 re-reads the user.
        :param filtering: the target answers filtered queries; without, users are matched
            against a listing of the target (made before the first create, or when first
            needed).
        :param capabilities: what the target supports (page sizes, cursors for listings)."""
        self.client = client
        self.capabilities = capabilities or Capabilities()
        self.filtering = filtering
        self.names: dict[str, str | None] = {}
        self.bulk = bulk
        self.etag = etag
        self.dialect = client.dialect
        self.patch = PatchSwitch(use_patch, client.target.name, "user updates")
        self.target = client.target
        self.index: dict[str, str | None] | None = None
        self.claimed = set(managed_ids)
        self._lock = threading.Lock()
        self.index_attribute = ""
        self._pool: ThreadPoolExecutor | None = None
        self.halted = threading.Event()
        """Set by a batch that met a fatal error: no write of any batch starts after it."""

    @contextlib.contextmanager
    def shared_threads(self) -> Iterator[None]:
        """One pool of ``concurrency`` threads for every batch loaded in the block, so that
        batches may overlap (the next one starts while the last writes of this one are in
        flight) and still never have more than ``concurrency`` writes in flight, taken in the
        order they were submitted. Leaving the block by an exception halts the load: what
        has not started is not sent (each queued action still passes through a thread, as a
        no-op, so that every batch waiting for its actions sees them done)."""
        pool = ThreadPoolExecutor(
            max_workers=self.target.concurrency, thread_name_prefix=f"load-{self.target.name}"
        )
        self._pool = pool
        self.halted.clear()
        try:
            yield
        except BaseException:
            self.halted.set()
            raise
        finally:
            self._pool = None
            pool.shutdown(wait=True)

    def threads(self, wanted: int) -> AbstractContextManager[ThreadPoolExecutor]:
        """The shared pool (:meth:`shared_threads`) when there is one, else a pool of
        ``wanted`` threads of the caller's own."""
        if self._pool is not None:
            return contextlib.nullcontext(self._pool)
        return ThreadPoolExecutor(max_workers=max(1, min(self.target.concurrency, wanted)))

    def prefetch(self, creates: int, capabilities: Capabilities) -> bool:
        """List the target's users once when that costs fewer requests than a look-up per
        create, or always when the target cannot filter.

        Only for a plain ``attr eq "%s"`` matching filter. Afterwards a create whose value is
        not in the listing is POSTed without a look-up; a 409 still leads to adoption, and a
        retried create looks up again (or lists again), so the listing never causes a
        duplicate.
        """
        attribute = self.dialect.equality_attribute(self.target.user_match_filter)
        if not self.filtering:
            if attribute is None:
                raise ConfigError(
                    f"target {self.target.name} answers no filters: user_match_filter must be "
                    'a plain attribute eq "%s" so users can be matched against a listing'
                )
            if creates:
                self._list(attribute, capabilities)
            return bool(creates)
        if attribute is None or creates < PREFETCH_MIN_CREATES:
            return False
        page_size = min(LIST_PAGE_SIZE, capabilities.max_page_size or LIST_PAGE_SIZE)
        total = self.client.users_at_probe  # the run's first request counted them
        if total is None:
            total = self.client.count(self.dialect.users_path)
        if total is None or -(-total // page_size) >= creates:
            return False
        self._list(attribute, capabilities)
        return True

    def _list(self, attribute: str, capabilities: Capabilities) -> None:
        """Index the target's users by the matching attribute and by userName."""
        self.capabilities = capabilities
        page_size = min(LIST_PAGE_SIZE, capabilities.max_page_size or LIST_PAGE_SIZE)
        index: dict[str, str | None] = {}
        names: dict[str, str | None] = {}
        pages = self.client.list_all(
            self.dialect.users_path,
            sorted({attribute, "userName"}),
            page_size,
            cursor=capabilities.cursor,
        )
        for resource in pages:
            scim_id = str(resource.get("id") or "")
            for table, name in ((index, attribute), (names, "userName")):
                value = resource.get(name)
                if isinstance(value, str) and scim_id:
                    key = self.dialect.match_key(name, value)
                    table[key] = None if key in table else scim_id  # None: ambiguous
        self.index, self.names, self.index_attribute = index, names, attribute

    def find_existing(
        self, payload: dict[str, Any], *, by_user_name: bool = False, use_index: bool = False
    ) -> dict[str, Any] | None:
        """The target's user matching this payload: by the configured filter, or by userName.

        With ``use_index`` and a listing from :meth:`prefetch`, the listing answers instead;
        for a target that cannot filter, a listing always answers (made again when asked
        without ``use_index``, as after a failed POST).
        """
        if not self.filtering and (not use_index or self.index is None):
            attribute = self.index_attribute or self.dialect.equality_attribute(
                self.target.user_match_filter
            )
            if attribute is None:
                raise ConfigError(
                    f"target {self.target.name} answers no filters: user_match_filter must be "
                    'a plain attribute eq "%s" so users can be matched against a listing'
                )
            self._list(attribute, self.capabilities)
        if (use_index or not self.filtering) and self.index is not None:
            if by_user_name:
                table, key = self.names, name_key(str(payload["userName"]))
            else:
                value = lookup_value(payload, self.target.user_match_attribute)
                table = self.index
                key = self.dialect.match_key(self.index_attribute, value) if value else ""
            if key not in table:
                return None
            scim_id = table[key]
            if scim_id is not None:
                return self.client.get(self.dialect.users_path, scim_id)
            if not self.filtering:
                raise RejectedError(f"several users on the target have {key!r}; refusing to guess")
        if by_user_name:
            filter_ = self.dialect.match_filter('userName eq "%s"', str(payload["userName"]))
        else:
            value = lookup_value(payload, self.target.user_match_attribute)
            if value is None:
                return None
            filter_ = self.dialect.match_filter(self.target.user_match_filter, value)
        found = self.client.find(self.dialect.users_path, filter_)
        if len(found) > 1:
            raise RejectedError(
                f"{len(found)} users on the target match {filter_}; refusing to guess"
            )
        return found[0] if found else None

    def update(
        self,
        scim_id: str,
        old: dict[str, Any],
        new: dict[str, Any],
        *,
        adopting: bool = False,
        version: str | None = None,
    ) -> str | None:
        """Bring a target user from ``old`` to ``new`` by PATCH (when allowed) or PUT; return
        its new ETag. With ETags, a 412 (changed on the target meanwhile) re-reads the user
        and applies the change to what it holds now, once."""
        if_match = version if self.etag else None
        try:
            return self._write(scim_id, old, new, adopting, if_match)
        except PreconditionFailed:
            current = self.client.get(self.dialect.users_path, scim_id)
            keys = set(old) | set(new)
            now = {key: current[key] for key in keys if key in current}
            return self._write(scim_id, now, new, adopting, etag_of(current, {}))

    def _write(
        self,
        scim_id: str,
        old: dict[str, Any],
        new: dict[str, Any],
        adopting: bool,
        if_match: str | None,
    ) -> str | None:
        path = self.dialect.users_path
        if not self.patch.on:
            return self.client.replace(path, scim_id, new, if_match)
        operations = self.dialect.patch_operations(old, new)
        if adopting:
            operations = [op for op in operations if op["op"] != "remove"]
        if not operations:
            return None
        try:
            return self.client.patch(path, scim_id, operations, if_match)
        except RejectedError as exc:
            if exc.status not in PATCH_REFUSED:
                raise
            self.patch.refused(exc)
            return self.client.replace(path, scim_id, new, if_match)

    def create(self, payload: dict[str, Any]) -> tuple[str, bool, str | None]:
        """Create or adopt the user; return (SCIM id, adopted, ETag).

        A POST that failed transiently may still have created the user, so every new attempt
        starts with a look-up: a lost response never turns into a duplicate.
        """
        attempts = 1 + self.target.max_retries
        for attempt in range(1, attempts + 1):
            existing = self.find_existing(payload, use_index=attempt == 1)
            if existing is not None:
                return str(existing["id"]), True, self.adopt(existing, payload)
            try:
                created = self.client.create(self.dialect.users_path, payload)
            except ConflictError:
                existing = self.find_existing(payload, by_user_name=True)
                if existing is None:
                    raise
                return str(existing["id"]), True, self.adopt(existing, payload)
            except TransientError as exc:
                if attempt == attempts:
                    raise
                self.client.sleep(self.client.backoff(attempt, exc.retry_after))
                continue
            self.claim(str(created["id"]), str(payload.get("userName")))
            return str(created["id"]), False, etag_of(created, {})
        raise AssertionError("unreachable")

    def claim(self, scim_id: str, user_name: str) -> None:
        """Mark a target user as ours for this run's directory entry; refuse a second claim."""
        with self._lock:
            if scim_id in self.claimed:
                raise RejectedError(
                    f"the target's user {user_name!r} ({scim_id}) is already provisioned for "
                    "another directory entry; refusing to take it over"
                )
            self.claimed.add(scim_id)

    def adopt(self, existing: dict[str, Any], payload: dict[str, Any]) -> str | None:
        """Take over a user that already exists on the target, aligning what we manage;
        return its ETag afterwards. The target's ``adopt_existing`` policy and
        ``protected_accounts`` may refuse (:func:`adoption_refused`)."""
        refused = adoption_refused(self.target, existing, payload)
        if refused:
            raise RejectedError(refused)
        self.claim(str(existing["id"]), str(payload.get("userName")))
        known = {key: existing[key] for key in payload if key in existing}
        version = etag_of(existing, {})
        changed = self.update(str(existing["id"]), known, payload, adopting=True, version=version)
        return changed or version

    def bulk_operation(self, action: Action, bulk_id: str) -> dict[str, Any] | None:
        """The Bulk operation doing an action, or ``None`` when it must go on its own: a create
        that needs a look-up first (no listing, or the user already exists), a no-op update."""
        path = self.dialect.users_path
        payload = action.payload or {}
        if action.kind == "create":
            value = lookup_value(payload, self.target.user_match_attribute)
            if self.index is None or value is None:
                return None
            if self.dialect.match_key(self.index_attribute, value) in self.index:
                return None
            data = self.dialect.to_wire(payload)
            return {"method": "POST", "path": path, "bulkId": bulk_id, "data": data}
        target = f"{path}/{action.scim_id}"
        if action.kind == "delete":
            return {"method": "DELETE", "path": target, "bulkId": bulk_id}
        if not self.patch.on:
            data = self.dialect.to_wire(self.dialect.replace_body(str(action.scim_id), payload))
            put = {"method": "PUT", "path": target, "bulkId": bulk_id, "data": data}
            if self.etag and action.version:
                put["version"] = action.version
            return put
        operations = self.dialect.patch_operations(action.previous or {}, payload)
        if not operations:
            return None
        data = self.dialect.patch_body(operations)
        op = {"method": "PATCH", "path": target, "bulkId": bulk_id, "data": data}
        if self.etag and action.version:
            op["version"] = action.version
        return op

    def run_bulk(
        self,
        actions: list[Action],
        confirmed: Callable[[list[Outcome]], None] = lambda outcomes: None,
    ) -> tuple[list[Outcome], list[Action]]:
        """Send what can go in Bulk requests, up to ``concurrency`` requests at a time; return
        the outcomes and the actions left to do one by one (those Bulk cannot carry, and those
        whose Bulk operation failed in a way worth a second, careful try: a conflict, a
        transient error, no answer). ``confirmed`` gets each request's outcomes as soon as it
        is answered, on the calling thread (to record them at once)."""
        assert self.bulk is not None
        operations: list[dict[str, Any]] = []
        by_id: dict[str, Action] = {}
        rest: list[Action] = []
        for number, action in enumerate(actions):
            operation = self.bulk_operation(action, f"op{number}")
            if operation is None:
                rest.append(action)
            else:
                operations.append(operation)
                by_id[operation["bulkId"]] = action
        outcomes: list[Outcome] = []
        chunks = list(bulk_chunks(operations, self.bulk, self.target.concurrency))
        fatal: BaseException | None = None
        with self.threads(len(chunks)) as pool:
            futures = [pool.submit(self._send_bulk, chunk, by_id) for chunk in chunks]
            for chunk, future in zip(chunks, futures, strict=True):
                # every answered request is recorded, even after a fatal one
                try:
                    done, left = future.result()
                except FatalError as exc:  # the audit log says which writes stopped the run
                    fatal = fatal or exc
                    done = [Outcome(by_id[op["bulkId"]], False, str(exc)) for op in chunk]
                    left = []
                except Exception as exc:  # re-raised below, after recording the others
                    fatal = fatal or exc
                    continue
                try:
                    confirmed(done)
                except Exception as exc:  # the store failed: still try to record the others
                    fatal = fatal or exc
                outcomes += done
                rest += left
        if fatal is not None:
            raise fatal
        return outcomes, rest

    def _send_bulk(
        self, chunk: list[dict[str, Any]], by_id: dict[str, Action]
    ) -> tuple[list[Outcome], list[Action]]:
        """One Bulk request: the outcomes it confirmed, and the actions to do one by one
        (neither when another batch halted the load before it started)."""
        if self.halted.is_set():
            return [], []
        try:
            _, body, _ = self.client.send(
                "POST", "/Bulk", body=self.dialect.bulk_body(chunk), retry=False
            )
        except FatalError:
            self.halted.set()  # no request of any batch starts after it
            raise
        except (TransientError, RejectedError) as exc:
            log.info("a Bulk request failed (%s); its changes go one by one", exc)
            return [], [by_id[op["bulkId"]] for op in chunk]
        results = self.dialect.bulk_results(body)
        answered: dict[str, tuple[int, dict[str, Any], str]] = {
            bulk_id: (status, response, location)
            for bulk_id, status, response, location in results
            if bulk_id
        }
        outcomes: list[Outcome] = []
        rest: list[Action] = []
        for position, op in enumerate(chunk):
            result = answered.get(op["bulkId"])
            if result is None and len(results) == len(chunk) and not results[position][0]:
                _, status, response, location = results[position]
                result = (status, response, location)
            outcome = self._bulk_outcome(by_id[op["bulkId"]], op, result)
            if outcome is None:
                rest.append(by_id[op["bulkId"]])
            else:
                outcomes.append(outcome)
        return outcomes, rest

    def _bulk_outcome(self, action: Action, op: dict[str, Any], result: Any) -> Outcome | None:
        """The outcome of one Bulk operation, or ``None`` to do the action one by one."""
        if result is None:
            return None
        status, response, location = result
        what = f"{op['method']} {op['path']} (in Bulk)"
        if status < 300:
            version = etag_of(response, {})
            if action.kind == "create":
                created = str(response.get("id") or location.rstrip("/").rsplit("/", 1)[-1])
                self.claim(created, action.user_name)
                return Outcome(action, True, "", created, version=version)
            kept = None if action.kind == "delete" else action.scim_id
            return Outcome(action, True, "", kept, version=version)
        if status == 404 and action.kind in ("disable", "delete"):
            return Outcome(action, True, "already gone from the target", None)
        if status in (404, 405, 409, 412, 429) or status >= 500:
            return None
        detail = shorten(str(response.get("detail") or response.get("Errors") or ""))
        return Outcome(
            action, False, f"{what} failed: HTTP {status}" + (f": {detail}" if detail else "")
        )

    def attempt(self, action: Action) -> Outcome | None:
        """:meth:`run`, or ``None`` when a batch halted the load before this action started
        (nothing was sent for it). A fatal error halts the load at once: no action of any
        batch starts after it."""
        if self.halted.is_set():
            return None
        try:
            return self.run(action)
        except FatalError:
            self.halted.set()
            raise

    def run(self, action: Action) -> Outcome:
        """Carry out one action; never raises except :class:`FatalError`."""
        try:
            return self._run(action)
        except FatalError:
            raise
        except ScimError as exc:
            return Outcome(action, False, str(exc))

    def _run(self, action: Action) -> Outcome:
        payload = action.payload or {}
        if action.kind == "create":
            scim_id, adopted, version = self.create(payload)
            detail = "adopted existing user" if adopted else ""
            return Outcome(action, True, detail, scim_id, adopted, version)
        assert action.scim_id is not None
        if action.kind in ("update", "disable"):
            old = action.previous or {}
            try:
                version = self.update(action.scim_id, old, payload, version=action.version)
            except NotFoundError:
                if action.kind == "disable":
                    return Outcome(action, True, "already gone from the target", None)
                scim_id, adopted, version = self.create(payload)
                detail = "was missing on the target; re-created"
                return Outcome(action, True, detail, scim_id, adopted, version)
            return Outcome(action, True, "", action.scim_id, version=version)
        try:
            self.client.delete(self.dialect.users_path, action.scim_id)
        except NotFoundError:
            return Outcome(action, True, "already gone from the target", None)
        return Outcome(action, True, "", None)


def audit_entry(outcome: Outcome) -> AuditEntry:
    """The audit-log entry of one outcome."""
    action = outcome.action
    return AuditEntry(
        object="user",
        action=action.kind,
        source_id=action.source_id,
        name=action.user_name,
        scim_id=outcome.scim_id or action.scim_id,
        outcome="ok" if outcome.ok else "failed",
        cause=outcome.detail,
    )


def record(store: StateStore, target: str, outcomes: list[Outcome]) -> None:
    """Write confirmed outcomes to the state store (failed ones leave it as it was) and every
    outcome to the audit log, in one transaction."""
    saves: list[StateRecord] = []
    removals: list[str] = []
    for outcome in outcomes:
        if not outcome.ok:
            continue
        action = outcome.action
        if outcome.scim_id is None:
            removals.append(action.source_id)
            continue
        payload = action.payload or {}
        saves.append(
            StateRecord(
                source_id=action.source_id,
                scim_id=outcome.scim_id,
                user_name=str(payload.get("userName", action.user_name)),
                content_hash=content_hash(payload),
                payload=payload,
                status="active" if payload.get("active", True) else "disabled",
                version=outcome.version,
                dn=action.dn,
            )
        )
    store.apply(target, saves, removals, [audit_entry(o) for o in outcomes])


BULK_SPREAD_MIN = 100
"""Operations a Bulk request carries at least when a batch is spread over concurrent ones."""


def bulk_chunks(
    operations: list[dict[str, Any]], capabilities: Capabilities, concurrency: int = 1
) -> Iterator[list[dict[str, Any]]]:
    """Bulk requests within the target's maxOperations and (with a 10 % margin)
    maxPayloadSize; fewer operations than ``concurrency`` full requests hold are spread over
    up to ``concurrency`` requests (sent side by side) of at least :data:`BULK_SPREAD_MIN`,
    not packed into one."""
    spread = max(-(-len(operations) // max(concurrency, 1)), BULK_SPREAD_MIN)
    max_operations = max(1, min(capabilities.bulk_max_operations or 1, spread))
    max_bytes = int((capabilities.bulk_max_payload or 1_000_000) * 0.9)
    chunk: list[dict[str, Any]] = []
    size = 200
    for op in operations:
        op_size = len(json.dumps(op)) + 1
        if chunk and (len(chunk) >= max_operations or size + op_size > max_bytes):
            yield chunk
            chunk, size = [], 200
        chunk.append(op)
        size += op_size
    if chunk:
        yield chunk


RECORD_EVERY = 0.25
"""Seconds between state-store transactions while a batch runs."""


def run_batch(loader: Loader, store: StateStore, actions: Iterable[Action]) -> list[Outcome]:
    """Carry out actions concurrently; record confirmed ones every :data:`RECORD_EVERY` seconds.

    A fatal error stops the batch, and any batch overlapping it (:attr:`Loader.halted`):
    nothing new starts, what is running finishes and is recorded, then the error is raised (in
    the batch that met it; the others return what they confirmed).
    """
    try:
        return _run_batch(loader, store, list(actions))
    except BaseException:
        loader.halted.set()  # a fatal answer, the store failing, an interrupt: no batch goes on
        raise


def _run_batch(loader: Loader, store: StateStore, actions: list[Action]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    target = loader.target.name
    if loader.bulk is not None:
        outcomes, actions = loader.run_bulk(actions, lambda done: record(store, target, done))
    with loader.threads(len(actions)) as pool:
        submitted = {pool.submit(loader.attempt, action): action for action in actions}
        pending = set(submitted)
        fatal: BaseException | None = None
        while pending:
            done, pending = wait(pending, timeout=RECORD_EVERY)
            if fatal is None:
                failed = (f.exception() for f in done if not f.cancelled())
                fatal = next((exc for exc in failed if exc is not None), None)
                if fatal is not None:
                    loader.halted.set()
                    for future in pending:
                        future.cancel()
            answered = [f.result() for f in done if not f.cancelled() and f.exception() is None]
            confirmed = [outcome for outcome in answered if outcome is not None]
            stopped = [  # the audit log says which write the run stopped on, and why
                Outcome(submitted[f], False, str(f.exception()))
                for f in done
                if not f.cancelled() and isinstance(f.exception(), FatalError)
            ]
            record(store, target, [*confirmed, *stopped])
            outcomes += confirmed
        if fatal is not None:
            raise fatal
    return outcomes


@task(name="load-to-SCIM", cache_policy=NO_CACHE)
def load_batch(
    loader: Loader, store: StateStore, actions: list[Action], batch: str
) -> list[Outcome]:
    """Apply one batch of planned actions to the target (never cached: these are writes)."""
    started = time.monotonic()
    outcomes = run_batch(loader, store, actions)
    failed = sum(1 for o in outcomes if not o.ok)
    log.info(
        "batch %s: %d actions, %d failed, %.1fs",
        batch,
        len(outcomes),
        failed,
        time.monotonic() - started,
    )
    return outcomes

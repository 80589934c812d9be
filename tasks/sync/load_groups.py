"""Load groups: create, rename, change members and delete groups on a SCIM target.

A new group is created with all its members in one POST, unless the config or the vendor
limits members per request, or the target answers that the request is too large (HTTP 413):
then the POST carries the first ``max_members`` and PATCHes add the rest. Membership changes
go by PATCH ``add``/``remove`` operations, at most ``max_members`` member changes per request,
so a 20,000-member group changed by 10 members costs one read and one PATCH. Before changing a
group, its current members are read once, so what someone else changed on the target is
corrected too (authoritative mode) or left alone (additive mode). PUT of the whole member list
is used only when the target has no PATCH. The state store is updated after every confirmed
request, so a run stopped half-way resumes where it was.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import TargetConfig
from tasks.errors import (
    PATCH_REFUSED,
    ConflictError,
    FatalError,
    NotFoundError,
    RejectedError,
    ScimError,
)
from tasks.scim.client import ScimClient
from tasks.scim.dialect import Capabilities, Scim20
from tasks.state.store import AuditEntry, GroupRecord, StateStore
from tasks.sync.group_plan import GroupAction
from tasks.sync.load import PREFETCH_MIN_CREATES, PatchSwitch

log = logging.getLogger(__name__)

DEFAULT_MAX_MEMBERS = 100
"""Member changes per PATCH when neither the config nor the target says (AWS's limit)."""


def max_members(target: TargetConfig, capabilities: Capabilities, dialect: Scim20) -> int:
    """Member changes per request: the config, else the vendor's documented limit, else the
    target's bulk.maxOperations, else 100."""
    return (
        target.max_members_per_request
        or dialect.max_members_per_request
        or capabilities.bulk_max_operations
        or DEFAULT_MAX_MEMBERS
    )


def members_per_create(target: TargetConfig, dialect: Scim20) -> int | None:
    """Members a new group's POST carries: the config's or the vendor's limit, else all
    (``None``): as few requests as the target accepts (a target's ``bulk.maxOperations``
    limits Bulk operations, not the members of one POST)."""
    return target.max_members_per_request or dialect.max_members_per_request


def member_chunks(
    add: Iterable[str], remove: Iterable[str], size: int
) -> Iterator[tuple[list[str], list[str]]]:
    """(add, remove) lists of at most ``size`` member changes in all, removals first."""
    changes = [("remove", m) for m in sorted(remove)] + [("add", m) for m in sorted(add)]
    for start in range(0, len(changes), size):
        chunk = changes[start : start + size]
        yield (
            [m for kind, m in chunk if kind == "add"],
            [m for kind, m in chunk if kind == "remove"],
        )


@dataclass(frozen=True, slots=True)
class GroupOutcome:
    action: GroupAction
    ok: bool
    detail: str = ""
    added: int = 0
    removed: int = 0
    adopted: bool = False
    scim_id: str | None = None


class GroupLoader:
    """Carries out group actions on one target and records each confirmed step."""

    def __init__(
        self,
        client: ScimClient,
        store: StateStore,
        *,
        use_patch: bool,
        max_members: int,
        filtering: bool = True,
        managed_users: Iterable[str] = (),
        page_size: int = 1000,
        cursor: bool = False,
        create_members: int | None = None,
    ) -> None:
        """:param filtering: the target answers filtered queries; without, groups are found
        in one listing of the target's groups (``page_size`` a page, by cursor if ``cursor``).
        :param managed_users: the SCIM ids of the users provisioned on this target: on a target
            that never returns members (AWS), adopting a group asks which of them (and of the
            desired members) are in it.
        :param create_members: members a new group's POST carries (the rest by PATCH of
            ``max_members`` each); ``None``: all of them."""
        self.client = client
        self.create_members = create_members
        self.notes: list[str] = []
        """What the target made this run do, for the run's report."""
        self._notes_lock = threading.Lock()
        self.managed_users = frozenset(managed_users)
        self.page_size = page_size
        self.cursor = cursor
        self.filtering = filtering
        self._listing: dict[str, str | None] | None = None
        self._listing_lock = threading.Lock()
        self.use_listing = not filtering
        """Groups are found in one listing of the target (see :meth:`prefetch`)."""
        self.store = store
        self.dialect = client.dialect
        self.target = client.target
        self.path = client.dialect.groups_path
        self.patch = PatchSwitch(use_patch, client.target.name, "group changes")
        self.max_members = max_members
        self.additive = client.target.membership_mode == "additive"

    def _save(self, record: GroupRecord) -> None:
        self.store.apply_groups(self.target.name, [record], [])

    def prefetch(self, creates: int) -> bool:
        """Before many creates, list the target's groups once instead of a look-up per
        create (a plain ``attr eq "%s"`` matching filter on the matching attribute only).
        A create not in the listing is POSTed at once; a 409 still looks the group up with
        the filter and adopts it, so the listing never causes a duplicate."""
        attribute = self.dialect.equality_attribute(self.target.group_match_filter)
        if (
            self.use_listing
            or attribute != self.target.group_match_attribute
            or creates < PREFETCH_MIN_CREATES
        ):
            return False
        self._listed()
        self.use_listing = True
        return True

    def _key(self, value: str) -> str:
        """displayName compares without case (RFC 7643: caseExact false); externalId exactly."""
        return value.casefold() if self.target.group_match_attribute == "displayName" else value

    def find_existing(self, action: GroupAction, *, fresh: bool = False) -> dict[str, Any] | None:
        """The target's group matching the action: from the listing when there is one (not
        with ``fresh``, on a target that filters), else by the matching filter."""
        value = action.display_name
        if self.target.group_match_attribute == "externalId":
            value = action.source_id
        if self.use_listing and not (fresh and self.filtering):
            found_id = self._listed().get(self._key(value), "")
            if found_id is None:
                raise RejectedError(f"several groups on the target have {value!r}")
            return self.client.get(self.path, found_id) if found_id else None
        filter_ = self.dialect.match_filter(self.target.group_match_filter, value)
        found = self.client.find(self.path, filter_)
        if len(found) > 1:
            raise RejectedError(f"{len(found)} groups on the target match {filter_}")
        return found[0] if found else None

    def _listed(self) -> dict[str, str | None]:
        """The target's groups by the matching attribute, listed once."""
        attribute = self.target.group_match_attribute
        with self._listing_lock:
            if self._listing is None:
                listing: dict[str, str | None] = {}
                pages = self.client.list_all(
                    self.path, [attribute], self.page_size, cursor=self.cursor
                )
                for group in pages:
                    value = group.get(attribute)
                    if isinstance(value, str) and group.get("id"):
                        key = self._key(value)
                        listing[key] = None if key in listing else str(group["id"])
                self._listing = listing
            return self._listing

    def create(self, action: GroupAction) -> tuple[GroupOutcome, GroupRecord]:
        """Create (or adopt) the group; every request but the last is recorded at once, the
        last one's record is returned (written with the audit entry)."""
        existing = self.find_existing(action)
        if existing is None:
            per_request = (self.create_members if self.patch.on else None) or len(action.members)
            chunks = list(member_chunks(action.members, (), per_request or 1)) or [([], [])]
            try:
                try:
                    created = self._post(action, chunks[0][0])
                except RejectedError as exc:
                    smaller = min(self.max_members, len(action.members) - 1)
                    if exc.status != 413 or len(chunks) > 1 or not self.patch.on or smaller < 1:
                        raise
                    self.note(
                        f"a new group with {len(action.members)} members was too large for "
                        f"one request (HTTP 413): created with {smaller}, the rest by PATCH"
                    )
                    chunks = list(member_chunks(action.members, (), smaller))
                    created = self._post(action, chunks[0][0])
            except ConflictError:
                existing = self.find_existing(action, fresh=True)
                if existing is None:
                    raise
            else:
                scim_id = str(created["id"])
                members = frozenset(chunks[0][0])
                record = GroupRecord(action.source_id, scim_id, action.display_name, members)
                for add, _ in chunks[1:]:
                    self._save(record)
                    if not self.patch.on:  # PATCH refused meanwhile: the rest by one PUT
                        outcome, record = self.change(action, scim_id, members)
                        return replace(outcome, added=len(action.members)), record
                    ops = self.dialect.member_operations(add, ())
                    try:
                        self.client.patch(self.path, scim_id, ops)
                    except RejectedError as exc:
                        if exc.status not in PATCH_REFUSED:
                            raise
                        self.patch.refused(exc)
                        outcome, record = self.change(action, scim_id, members)
                        return replace(outcome, added=len(action.members)), record
                    members |= frozenset(add)
                    record = GroupRecord(action.source_id, scim_id, action.display_name, members)
                return GroupOutcome(action, True, added=len(members), scim_id=scim_id), record
        return self.change(action, str(existing["id"]), frozenset(), adopting=True)

    def note(self, text: str) -> None:
        """Say once in the run's report (and log) what the target made this run do."""
        with self._notes_lock:
            if text in self.notes:
                return
            self.notes.append(text)
        log.warning("target %s: %s", self.target.name, text)

    def _post(self, action: GroupAction, members: list[str]) -> dict[str, Any]:
        body = self.dialect.group_body(action.display_name, action.source_id, members)
        return self.client.create(self.path, body)

    def change(
        self, action: GroupAction, scim_id: str, known: frozenset[str], *, adopting: bool = False
    ) -> tuple[GroupOutcome, GroupRecord]:
        """Rename and/or change members, from the group's current members on the target; every
        request but the last is recorded at once, the last one's record is returned."""
        current = self.current_members(scim_id, action, known, adopting)
        keep = action.keep | (current - known - action.members) if self.additive else frozenset()
        should = action.members | (keep & current) if self.additive else action.members
        add, remove = should - current, current - should
        rename = action.rename or adopting
        if self.patch.on:
            try:
                members = self._patch(action, scim_id, current, add, remove, rename, keep)
            except RejectedError as exc:
                if exc.status not in PATCH_REFUSED:
                    raise
                self.patch.refused(exc)
        if not self.patch.on:
            if add or remove or rename:
                body = self.dialect.group_body(action.display_name, action.source_id, should)
                self.client.replace(self.path, scim_id, body)
            members = should
        outcome = GroupOutcome(
            action,
            True,
            added=len(add),
            removed=len(remove),
            adopted=adopting,
            scim_id=scim_id,
        )
        return outcome, GroupRecord(action.source_id, scim_id, action.display_name, members, keep)

    def _patch(
        self,
        action: GroupAction,
        scim_id: str,
        current: frozenset[str],
        add: frozenset[str],
        remove: frozenset[str],
        rename: bool,
        keep: frozenset[str],
    ) -> frozenset[str]:
        """Member deltas (and a rename) by PATCH, chunked; the members afterwards."""
        members = frozenset(current)
        pending_rename = rename
        chunks = list(member_chunks(add, remove, self.max_members))
        for number, (chunk_add, chunk_remove) in enumerate(chunks, 1):
            ops = self.dialect.member_operations(chunk_add, chunk_remove)
            if pending_rename:
                ops = self.dialect.rename_operations(action.display_name, action.source_id) + ops
                pending_rename = False
            self.client.patch(self.path, scim_id, ops)
            members = (members - frozenset(chunk_remove)) | frozenset(chunk_add)
            if number < len(chunks):
                self._save(
                    GroupRecord(action.source_id, scim_id, action.display_name, members, keep)
                )
        if pending_rename:
            ops = self.dialect.rename_operations(action.display_name, action.source_id)
            self.client.patch(self.path, scim_id, ops)
        return members

    def current_members(
        self, scim_id: str, action: GroupAction, known: frozenset[str], adopting: bool
    ) -> frozenset[str]:
        """The group's members now: read from the target; on a target that never returns
        them (AWS), what the state store recorded, or, for a group not ours yet, each of the
        desired and provisioned users asked one by one (``members eq``)."""
        if self.dialect.members_readable:
            group = self.client.get(self.path, scim_id, ["members"])
            return frozenset(self.dialect.member_ids(group))
        if not adopting:
            return known
        members = set()
        for user in sorted(action.members | self.managed_users):
            if self.client.find(self.path, self.dialect.membership_filter(scim_id, user)):
                members.add(user)
        return frozenset(members)

    def run(self, action: GroupAction) -> GroupOutcome:
        """Carry out one action; its last state write and its audit-log entry go in one
        transaction (the earlier requests of a big group are recorded as each is confirmed).
        Never raises except :class:`FatalError`."""
        outcome, saves, removals = self._run(action)
        audit = [group_audit_entry(outcome)]
        self.store.apply_groups(self.target.name, saves, removals, audit)
        return outcome

    def _run(self, action: GroupAction) -> tuple[GroupOutcome, list[GroupRecord], list[str]]:
        """The outcome, and the state to write with its audit entry (saves, removals)."""
        try:
            if action.kind == "create":
                outcome, record = self.create(action)
                return outcome, [record], []
            assert action.scim_id is not None
            if action.kind == "update":
                try:
                    outcome, record = self.change(action, action.scim_id, action.known)
                except NotFoundError:
                    outcome, record = self.create(action)
                return outcome, [record], []
            with contextlib.suppress(NotFoundError):  # already gone
                self.client.delete(self.path, action.scim_id)
            return GroupOutcome(action, True), [], [action.source_id]
        except FatalError:
            raise
        except ScimError as exc:
            return GroupOutcome(action, False, str(exc)), [], []


def group_audit_entry(outcome: GroupOutcome) -> AuditEntry:
    """The audit-log entry of one group outcome; the cause says what changed."""
    action = outcome.action
    cause = outcome.detail
    if outcome.ok:
        parts = ["adopted existing group"] if outcome.adopted else []
        if action.rename:
            parts.append("renamed")
        if outcome.added:
            parts.append(f"+{outcome.added} members")
        if outcome.removed:
            parts.append(f"-{outcome.removed} members")
        cause = ", ".join(parts)
    return AuditEntry(
        object="group",
        action=action.kind,
        source_id=action.source_id,
        name=action.display_name,
        scim_id=outcome.scim_id or action.scim_id,
        outcome="ok" if outcome.ok else "failed",
        cause=cause,
    )


@task(name="load-groups-to-SCIM", cache_policy=NO_CACHE)
def load_groups(loader: GroupLoader, actions: list[GroupAction]) -> list[GroupOutcome]:
    """Apply a batch of group actions (never cached: these are writes)."""
    with ThreadPoolExecutor(max_workers=loader.target.concurrency) as pool:
        return list(pool.map(loader.run, actions))

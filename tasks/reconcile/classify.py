"""Reconciliation: compare the directory, the state store and what the target really holds.

Incremental sync trusts the state store; reconciliation trusts nothing. The target's users
and groups are listed (compactly: ids, the matching values and a hash of what we manage), then
joined with the desired users and the state store (pandas merges) to decide, per object, one
class of difference (:data:`USER_CLASSES`, :data:`GROUP_CLASSES`). The result is also the
*truth*: state records that describe what the target holds, so the normal plan and load path,
fed with them, repairs exactly the differences.

Everything here is pure: the flow lists the target and fetches the few objects it must read.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tasks.config import MultiValuedRule, TargetConfig
from tasks.ldap.dn import normalize_dn
from tasks.reconcile.compact import Index, Strings, as_numpy, column, h64
from tasks.scim.dialect import Scim20, name_key
from tasks.state.store import GroupRecord, StateRecord, Status, UserRow
from tasks.sync.group_plan import DesiredGroup, display_name
from tasks.sync.load import lookup_value
from tasks.sync.plan import resolve_references
from tasks.sync.transform import REFERENCE, DesiredUser, Rejection, content_hash

Shape = dict[str, Any]
"""The attributes we manage: key → ``None`` (a simple value), a sub-shape (a complex
attribute) or a set of sub-attribute names (a multi-valued complex attribute)."""

USER_CLASSES = (
    "in step",
    "missing on the target",
    "stale state",
    "attributes drifted",
    "re-linked",
    "duplicate on the target",
    "unmanaged",
)
GROUP_CLASSES = (
    "in step",
    "missing on the target",
    "stale state",
    "membership drifted",
    "renamed on the target",
    "re-linked",
    "unmanaged",
)


def managed_shape(mapping: dict[str, Any]) -> Shape:
    """The shape of what a mapping manages, plus ``active``."""

    def walk(node: dict[str, Any]) -> Shape:
        shape: Shape = {}
        for key, rule in node.items():
            if isinstance(rule, dict):
                shape[key] = walk(rule)
            elif isinstance(rule, list):
                keys = {"value"}
                for item in rule:
                    if isinstance(item, MultiValuedRule):
                        keys |= {"type"} if item.type is not None else set()
                        keys |= {"display"} if item.display is not None else set()
                        keys |= {"primary"} if item.primary else set()
                shape[key] = keys
            else:
                shape[key] = None
        return shape

    return {**walk(mapping), "active": None}


def project(resource: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """The part of a SCIM resource that the shape manages (absent and empty values left out)."""
    out: dict[str, Any] = {}
    for key, sub in shape.items():
        value = resource.get(key)
        if value is None or value == "" or value == [] or value == {}:
            continue
        if isinstance(sub, dict):
            if isinstance(value, dict):
                value = project(value, sub)
                if not value:
                    continue
        elif isinstance(sub, set) and isinstance(value, list):
            value = [
                {k: v for k, v in item.items() if k in sub} if isinstance(item, dict) else item
                for item in value
            ]
        out[key] = value
    return out


def _canonical(value: Any) -> Any:
    """Order-free form: multi-valued attributes compared as sets, names case-sensitively."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return value


def managed_hash(resource: dict[str, Any], shape: Shape) -> bytes:
    """A 16-byte fingerprint of the managed part of a resource (desired or actual)."""
    canonical = json.dumps(_canonical(project(resource, shape)), sort_keys=True)
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


def drifted_attributes(actual: dict[str, Any], desired: dict[str, Any], shape: Shape) -> list[str]:
    """The top-level managed attributes whose values differ."""
    a, d = project(actual, shape), project(desired, shape)
    return sorted(k for k in set(a) | set(d) if _canonical(a.get(k)) != _canonical(d.get(k)))


@dataclass(frozen=True, slots=True)
class TargetUser:
    """One user as listed from the target, kept small: ids, matching values, a fingerprint."""

    scim_id: str
    external_id: str | None
    match_value: str | None
    user_name: str
    active: bool
    fingerprint: bytes


def target_user(
    resource: dict[str, Any], shape: Shape, match_attribute: str, dialect: Scim20
) -> TargetUser:
    match = lookup_value(resource, match_attribute)
    return TargetUser(
        scim_id=str(resource.get("id") or ""),
        external_id=str(resource["externalId"]) if resource.get("externalId") else None,
        match_value=dialect.match_key(match_attribute, match) if match else None,
        user_name=str(resource.get("userName") or ""),
        active=resource.get("active", True) is not False,
        fingerprint=managed_hash(resource, shape),
    )


def listing_attributes(shape: Shape, match_attribute: str) -> list[str]:
    """The attributes to ask for when listing the target's users."""
    return sorted({*shape, "userName", "externalId", "active", match_attribute.split(".")[0]})


@dataclass(slots=True)
class Difference:
    """One row of the reconciliation report."""

    object: str
    kind: str
    name: str
    source_id: str = ""
    scim_id: str = ""
    detail: str = ""


@dataclass(slots=True)
class Findings:
    """Objects counted per class of difference, and a report row per difference."""

    OBJECT: ClassVar[str] = ""
    CLASSES: ClassVar[tuple[str, ...]] = ()
    differences: list[Difference] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = dict.fromkeys(self.CLASSES, 0)

    def note(
        self, kind: str, name: str, source_id: str = "", scim_id: str = "", detail: str = ""
    ) -> Difference:
        """Count one object in ``kind``; unless it is in step, add (and return) its row."""
        self.counts[kind] += 1
        row = Difference(self.OBJECT, kind, name, source_id, scim_id, detail)
        if kind != "in step":
            self.differences.append(row)
        return row


@dataclass(slots=True)
class UserReconciliation(Findings):
    """The users of one target: differences, and the truth to plan from."""

    OBJECT: ClassVar[str] = "user"
    CLASSES: ClassVar[tuple[str, ...]] = USER_CLASSES
    truth: dict[str, StateRecord] = field(default_factory=dict)
    to_read: dict[str, str] = field(default_factory=dict)
    """SCIM id → source id of linked users whose actual values must be read (drifted, or to
    be deprovisioned): the truth records of these get their payload from that read."""
    drifted: dict[str, tuple[dict[str, Any], Difference]] = field(default_factory=dict)
    """SCIM id → (desired payload, report row) of the users whose attributes drifted."""
    desired: list[DesiredUser] = field(default_factory=list)
    """The directory users that differ (the others are in step: nothing to do for them)."""
    gone: set[str] = field(default_factory=set)
    """Source ids (and ``unmanaged:`` keys) of target users to deprovision."""
    drop: list[str] = field(default_factory=list)
    """Source ids whose state record points at nothing on the target: deleted."""
    unchanged: int = 0
    """Users in step whose state record is right: not in ``truth``, left alone."""

    def read(self, actual: dict[str, Any], shape: Shape) -> None:
        """Put a user read from the target into the truth, and name what drifted."""
        scim_id = str(actual.get("id") or "")
        source_id = self.to_read.get(scim_id)
        if source_id is None:
            return
        self.truth[source_id] = with_actual(self.truth[source_id], actual, shape)
        if scim_id in self.drifted:
            desired, row = self.drifted[scim_id]
            names = ", ".join(drifted_attributes(actual, desired, shape))
            row.detail = f"differs on the target: {names}"


def _status(active: bool) -> Status:
    return "active" if active else "disabled"


def _to_be_read(source_id: str, listed: TargetUser, user_name: str | None = None) -> StateRecord:
    """A truth record for a user whose values are still to be read from the target
    (:meth:`UserReconciliation.read` completes it)."""
    name = user_name or listed.user_name
    return StateRecord(source_id, listed.scim_id, name, "", {}, _status(listed.active))


def _frame(rows: Iterable[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(rows), columns=columns)


def _match_value(payload: dict[str, Any], attribute: str, dialect: Scim20) -> str | None:
    value = lookup_value(payload, attribute)
    return dialect.match_key(attribute, value) if value else None


class TargetTable:
    """The target's users, listed once, one compact row each (about 150 bytes a user).

    Rows are added while the listing pages in, then :meth:`seal` indexes them; a user listed
    twice (a page boundary moving under a paged listing) keeps its first row.
    """

    def __init__(self, users: Iterable[TargetUser] = ()) -> None:
        self.scim_ids = Strings()
        self.names = Strings()
        self.external_ids = Strings()
        self.match_values = Strings()
        self._scim_h = column()
        self._active = bytearray()
        self._fingerprints = bytearray()
        self.index = Index(np.zeros(0, np.uint64))
        self.scim_h = np.zeros(0, np.uint64)
        self.first = np.zeros(0, np.bool_)
        """Per row: whether it is the first row of its SCIM id (repeats are ignored)."""
        for user in users:
            self.add(user)
        if users:
            self.seal()

    def add(self, user: TargetUser) -> None:
        self.scim_ids.append(user.scim_id)
        self.names.append(user.user_name)
        self.external_ids.append(user.external_id or "")
        self.match_values.append(user.match_value or "")
        self._scim_h.append(h64(user.scim_id))
        self._active.append(user.active)
        self._fingerprints += user.fingerprint

    def seal(self) -> None:
        self.scim_h = as_numpy(self._scim_h)
        self.index = Index(self.scim_h)
        self.first = np.zeros(len(self.scim_h), np.bool_)
        self.first[np.unique(self.scim_h, return_index=True)[1]] = True

    def __len__(self) -> int:
        return len(self.scim_ids)

    def find(self, scim_id: str) -> int:
        """The row of a SCIM id, or -1."""
        row = self.index.find(h64(scim_id))
        return row if row >= 0 and self.scim_ids[row] == scim_id else -1

    def active(self, row: int) -> bool:
        return bool(self._active[row])

    def fingerprint(self, row: int) -> bytes:
        return bytes(self._fingerprints[16 * row : 16 * row + 16])

    def user(self, row: int) -> TargetUser:
        return TargetUser(
            self.scim_ids[row],
            self.external_ids[row] or None,
            self.match_values[row] or None,
            self.names[row],
            self.active(row),
            self.fingerprint(row),
        )


class StateTable:
    """The state store's users for one target without payloads (about 150 bytes a user)."""

    def __init__(self, rows: Iterable[UserRow]) -> None:
        self.source_ids = Strings()
        self.scim_ids = Strings()
        sid_h, scim_h, dn_h, hash_h, name_h = column(), column(), column(), column(), column()
        active = bytearray()
        for row in rows:
            self.source_ids.append(row.source_id)
            self.scim_ids.append(row.scim_id)
            sid_h.append(h64(row.source_id))
            scim_h.append(h64(row.scim_id))
            dn_h.append(h64(row.dn))
            hash_h.append(h64(row.content_hash))
            name_h.append(h64(name_key(row.user_name)))
            active.append(row.status == "active")
        self.sid_h, self.scim_h = as_numpy(sid_h), as_numpy(scim_h)
        self.dn_h, self.hash_h = as_numpy(dn_h), as_numpy(hash_h)
        self.active = np.frombuffer(bytes(active), dtype=np.bool_)
        self.by_source = Index(self.sid_h)
        self.by_name = Index(as_numpy(name_h))
        self.by_dn = Index(self.dn_h, prefer=self.active)  # a DN kept by a disabled account
        # and taken by a new entry resolves to the active one, as in the plan

    def __len__(self) -> int:
        return len(self.source_ids)

    def find(self, source_id: str) -> int:
        """The row of a source id, or -1."""
        row = self.by_source.find(h64(source_id))
        return row if row >= 0 and self.source_ids[row] == source_id else -1

    def name_holder(self, user_name: str) -> str | None:
        """The source id of a record with this userName (case-insensitive), if any (by hash:
        the caller confirms with the record itself)."""
        row = self.by_name.find(h64(name_key(user_name)))
        return self.source_ids[row] if row >= 0 else None


class UserReconciler:
    """Classifies one target's users while the directory streams past, keeping a compact row
    per user and the whole user only where it may differ.

    1. :meth:`add` each transformed batch. A user whose state record links to a target user
       with the same managed fingerprint, and whose record holds this very payload, status and
       DN, is in step: only its ids are kept. The others are *candidates*, kept whole.
       References (a manager) are resolved provisionally through the state store's DNs.
    2. :meth:`link`: candidates and leavers (state records no longer in the directory) are
       linked to target users (state link, then externalId, then the matching attribute).
       Returns the in-step users whose references resolve differently once every link is
       known (rare: a manager re-linked or moved); the caller reads those again and passes
       them to :meth:`recheck`.
    3. :meth:`classify` builds the :class:`UserReconciliation`: report rows, the truth records
       of the users that differ, what to read from the target, what to drop from the store.
    """

    def __init__(
        self,
        target: TargetConfig,
        dialect: Scim20,
        listed: TargetTable,
        state: StateTable,
        records_of: Callable[[list[str]], dict[str, StateRecord]],
    ) -> None:
        self.target = target
        self.dialect = dialect
        self.listed = listed
        self.state = state
        self.records_of = records_of
        self.shape = managed_shape(target.mapping)
        self.source_ids = Strings()
        self.dns = Strings()
        self._sid_h, self._ext_h, self._dn_h = column(), column(), column()
        self._link = array("q")
        """Per user: the target row it is in step with, or -1 (a candidate)."""
        self.candidates: dict[str, DesiredUser] = {}
        self.rejected: set[str] = set()
        self._ref_user, self._ref_row, self._ref_dn = array("q"), array("q"), column()
        self._final: dict[str, int] = {}
        self._how: dict[str, str] = {}
        self._leavers: list[str] = []
        self._kept: list[str] = []
        """Rejected users' state records: linked, never deprovisioned for the rejection."""
        self._copies: list[tuple[int, str]] = []
        self._ambiguous: list[tuple[int, str]] = []
        self._unmanaged: list[int] = []
        self._by_dn = Index(np.zeros(0, np.uint64))
        self._by_source = Index(np.zeros(0, np.uint64))

    def add(self, desired: Iterable[DesiredUser], rejected: Iterable[Rejection] = ()) -> None:
        """Take one transformed batch."""
        for user in desired:
            at = len(self._link)
            dn = normalize_dn(user.dn)
            external = user.payload.get("externalId")
            self.source_ids.append(user.source_id)
            self.dns.append(dn)
            self._sid_h.append(h64(user.source_id))
            self._dn_h.append(h64(dn))
            self._ext_h.append(h64(str(external)) if external else 0)
            row = self._in_step_row(at, user, dn)
            self._link.append(row)
            if row < 0:
                self.candidates[user.source_id] = self._kept_part(user)
        self.rejected.update(r.source_id for r in rejected if r.source_id)

    def _kept_part(self, user: DesiredUser) -> DesiredUser:
        """What a candidate needs kept: a user disabled in the directory and not provisioned
        as such is only ever found and deprovisioned, so its ids are enough (there are often
        many of them)."""
        if not user.disabled or self.target.provision_disabled_users:
            return user
        match = self.target.user_match_attribute.split(".")[0]
        keep = {"schemas", "userName", "externalId", "active", match}
        return replace(user, payload={k: v for k, v in user.payload.items() if k in keep})

    def _target_row(self, record: int) -> int:
        """The target row of the SCIM id a state record (row number, -1: none) holds, or -1
        when that SCIM id is not on the target."""
        return self.listed.find(self.state.scim_ids[record]) if record >= 0 else -1

    def _in_step_row(self, at: int, user: DesiredUser, dn: str) -> int:
        """The target row this user is in step with (and its state record right), or -1."""
        state, listed = self.state, self.listed
        record = state.find(user.source_id)
        row = self._target_row(record)
        if row < 0:
            return -1
        references: list[tuple[int, int]] = []

        def provisional(ref: str) -> str | None:
            key = h64(ref)
            holder = state.by_dn.find(key)
            found = self._target_row(holder)
            references.append((key, found))
            return listed.scim_ids[found] if found >= 0 else None

        payload, _ = resolve_references(user.payload, provisional)
        if (
            listed.fingerprint(row) != managed_hash(payload, self.shape)
            or int(state.hash_h[record]) != h64(content_hash(payload))
            or bool(state.active[record]) != listed.active(row)
            or int(state.dn_h[record]) not in (0, h64(dn))  # 0: a store without DNs yet
        ):
            return -1
        for key, found in references:
            self._ref_user.append(at)
            self._ref_dn.append(key)
            self._ref_row.append(found)
        return row

    @property
    def in_step(self) -> int:
        return int(np.count_nonzero(np.frombuffer(self._link, dtype=np.int64) >= 0))

    def link(self) -> set[str]:
        """Link candidates and leavers to target users; return the source ids of in-step users
        whose references must be resolved again (see :meth:`recheck`)."""
        state, listed = self.state, self.listed
        sid_h = as_numpy(self._sid_h)
        self._by_source = Index(sid_h)
        self._by_dn = Index(as_numpy(self._dn_h))
        present = self._by_source.find_many(state.sid_h)
        absent = [state.source_ids[r] for r in np.flatnonzero(present < 0)]
        self._leavers = [sid for sid in absent if sid not in self.rejected]
        self._kept = [sid for sid in absent if sid in self.rejected]
        external_of = self._external_ids([*self._leavers, *self._kept])
        unlinked: list[dict[str, Any]] = []
        for source_id in [*self.candidates, *self._leavers, *self._kept]:
            row = self._target_row(state.find(source_id))
            if row >= 0:
                self._final[source_id], self._how[source_id] = row, "state"
            elif source_id in self.candidates:
                payload = self.candidates[source_id].payload
                match = _match_value(payload, self.target.user_match_attribute, self.dialect)
                external = payload.get("externalId")
                unlinked.append(
                    {
                        "source_id": source_id,
                        "external_id": str(external) if external else None,
                        "match_value": match,
                    }
                )
            else:
                unlinked.append(
                    {
                        "source_id": source_id,
                        "external_id": external_of.get(source_id),
                        "match_value": None,
                    }
                )
        # target users no state record points at: the only ones a link may still take
        free_rows = np.flatnonzero(~np.isin(listed.scim_h, state.scim_h) & listed.first)
        free = _frame(
            (
                {
                    "row": int(r),
                    "external_id": listed.external_ids[r] or None,
                    "match_value": listed.match_values[r] or None,
                }
                for r in free_rows
            ),
            ["row", "external_id", "match_value"],
        )
        sources = _frame(unlinked, ["source_id", "external_id", "match_value"])
        for column_name in ("external_id", "match_value"):
            waiting = sources[~sources["source_id"].isin(set(self._final))].dropna(
                subset=[column_name]
            )
            waiting = waiting.drop_duplicates(subset=[column_name], keep=False)
            pairs = free.dropna(subset=[column_name]).merge(
                waiting[["source_id", column_name]], on=column_name, how="inner"
            )
            ambiguous = pairs[pairs.duplicated(subset=["source_id"], keep=False)]
            self._ambiguous += zip(ambiguous["row"], ambiguous["source_id"], strict=True)
            pairs = pairs.drop_duplicates(subset=["source_id"], keep=False)
            via = "externalId" if column_name == "external_id" else "match"
            for row, source_id in zip(pairs["row"], pairs["source_id"], strict=True):
                self._final[source_id], self._how[source_id] = int(row), via
            free = free[~free["row"].isin(set(pairs["row"]) | set(ambiguous["row"]))]
        # a free user carrying the externalId of a user linked elsewhere is a duplicate
        by_external = Index(as_numpy(self._ext_h))
        in_step = np.frombuffer(self._link, dtype=np.int64)
        ours: dict[str, str] = {}
        for source_id in self._final:
            user = self.candidates.get(source_id)
            external = (
                user.payload.get("externalId") if user is not None else external_of.get(source_id)
            )
            if external:
                ours[str(external)] = source_id
        for row, external in zip(free["row"], free["external_id"], strict=True):
            external = external if isinstance(external, str) else None  # NaN: none
            at = by_external.find(h64(external)) if external else -1
            if external in ours:
                self._copies.append((int(row), ours[external]))
            elif at >= 0 and in_step[at] >= 0:
                self._copies.append((int(row), self.source_ids[at]))
            else:
                self._unmanaged.append(int(row))
        return self._stale_references()

    def _external_ids(self, source_ids: list[str]) -> dict[str, str]:
        """The externalId in the state record of each of these users, read 1,000 at a time
        (a mass leaving must not hold every record)."""
        out: dict[str, str] = {}
        for at in range(0, len(source_ids), 1000):
            for source_id, record in self.records_of(source_ids[at : at + 1000]).items():
                external = record.payload.get("externalId")
                if external:
                    out[source_id] = str(external)
        return out

    def _final_row(self, at: int) -> int:
        """The target row user number ``at`` is linked to in the end, or -1."""
        if at < 0:
            return -1
        if self._link[at] >= 0:
            return int(self._link[at])
        return self._final.get(self.source_ids[at], -1)

    def _resolved_row(self, dn_h: int, dn: str | None = None) -> int:
        """The target row a reference to this DN resolves to once every link is known: the
        directory user at that DN, else (a rejected user, a leaver) the state record holding
        it, as the plan resolves it. ``dn`` given: the directory user's DN is compared too."""
        at = self._by_dn.find(dn_h)
        if at >= 0 and (dn is None or self.dns[at] == dn):
            return self._final_row(at)
        holder = self.state.by_dn.find(dn_h)
        return self._target_row(holder)

    def _stale_references(self) -> set[str]:
        users = np.frombuffer(self._ref_user, dtype=np.int64)
        dns = as_numpy(self._ref_dn)
        rows = np.frombuffer(self._ref_row, dtype=np.int64)
        stale = set()
        for user, dn_h, row in zip(users, dns, rows, strict=True):
            if self._resolved_row(int(dn_h)) != row:
                stale.add(self.source_ids[int(user)])
        return stale

    def recheck(self, users: Iterable[DesiredUser]) -> None:
        """Users :meth:`link` named, read again: classified in full, as candidates."""
        for user in users:
            at = self._by_source.find(h64(user.source_id))
            if at < 0 or self._link[at] < 0 or self.source_ids[at] != user.source_id:
                continue
            self._final[user.source_id], self._how[user.source_id] = int(self._link[at]), "state"
            self._link[at] = -1
            self.candidates[user.source_id] = user

    def scim_id_of(self, dn: str) -> str | None:
        """The SCIM id of the user at this (normalized) DN, once every link is known."""
        row = self._resolved_row(h64(dn), dn)
        return self.listed.scim_ids[row] if row >= 0 else None

    def classify(self) -> UserReconciliation:
        target, listed = self.target, self.listed
        result = UserReconciliation()
        result.counts["in step"] = self.in_step
        result.unchanged = self.in_step
        for user in self.candidates.values():
            payload, _ = resolve_references(user.payload, self.scim_id_of)
            row = self._final.get(user.source_id, -1)
            record = self.state.find(user.source_id)
            name = user.user_name
            if row < 0:
                if record >= 0:
                    result.note(
                        "stale state",
                        name,
                        user.source_id,
                        self.state.scim_ids[record],
                        "the SCIM id no longer exists on the target",
                    )
                    result.drop.append(user.source_id)
                elif not (user.disabled and not target.provision_disabled_users):
                    result.note("missing on the target", name, user.source_id)
                result.desired.append(user)
                continue
            actual = listed.user(row)
            how = self._how[user.source_id]
            if how != "state":
                detail = f"found by {how}" + (
                    f"; the state store had {self.state.scim_ids[record]}" if record >= 0 else ""
                )
                result.note("re-linked", name, user.source_id, actual.scim_id, detail)
            if actual.fingerprint == managed_hash(payload, self.shape):
                result.truth[user.source_id] = StateRecord(
                    user.source_id,
                    actual.scim_id,
                    name,
                    content_hash(payload),
                    payload,
                    _status(actual.active),
                    dn=normalize_dn(user.dn),
                )
                if how == "state":
                    result.note("in step", name, user.source_id, actual.scim_id)
                result.desired.append(user)
                continue
            if user.disabled and not target.provision_disabled_users and not actual.active:
                # disabled on both sides: nothing to do, nothing to read
                result.note("in step", name, user.source_id, actual.scim_id)
                if (
                    record >= 0
                    and self.state.scim_ids[record] == actual.scim_id
                    and not self.state.active[record]
                ):
                    result.unchanged += 1  # and its record is right: nothing to do
                else:
                    result.truth[user.source_id] = _to_be_read(user.source_id, actual, name)
                    result.desired.append(user)
                continue
            result.truth[user.source_id] = _to_be_read(user.source_id, actual, name)
            result.desired.append(user)
            row_note = result.note("attributes drifted", name, user.source_id, actual.scim_id)
            result.drifted[actual.scim_id] = (payload, row_note)
            result.to_read[actual.scim_id] = user.source_id
        for source_id in [*self._leavers, *self._kept]:
            leaving = source_id not in self.rejected  # rejected ones keep their account
            row = self._final.get(source_id, -1)
            if row < 0:
                result.drop.append(source_id)  # its SCIM id is gone from the target
                continue
            relinked = self._how[source_id] != "state"
            if not (leaving or relinked):
                continue  # rejected, linked as the store says: left as it is
            actual = listed.user(row)  # a leaver still on the target is deprovisioned
            if relinked:
                result.note(
                    "re-linked",
                    actual.user_name,
                    source_id,
                    actual.scim_id,
                    f"found by {self._how[source_id]}",
                )
            result.to_read[actual.scim_id] = source_id
            result.truth[source_id] = _to_be_read(source_id, actual)
            if leaving:
                result.gone.add(source_id)
        for row, source_id in [*self._ambiguous, *self._copies]:
            result.note(
                "duplicate on the target",
                listed.names[row],
                source_id,
                listed.scim_ids[row],
                "carries the externalId or matching value of a user linked elsewhere; left alone",
            )
        for row in self._unmanaged:
            other = listed.user(row)
            detail = "not ours; left alone"
            if target.deprovision_unmanaged:
                detail = f"not ours; {target.remove_action} (deprovision_unmanaged is on)"
                key = f"unmanaged:{other.scim_id}"
                result.to_read[other.scim_id] = key
                result.truth[key] = _to_be_read(key, other)
                result.gone.add(key)
            result.note("unmanaged", other.user_name, "", other.scim_id, detail)
        return result

    def active_scim_ids(
        self, source_ids: Iterable[str], truth: dict[str, StateRecord]
    ) -> dict[str, str]:
        """Source id → SCIM id of the users among ``source_ids`` active on the target (the
        truth for the users that differ, the listing for those in step): group members."""
        out: dict[str, str] = {}
        for source_id in source_ids:
            record = truth.get(source_id)
            if record is not None:
                if record.status == "active":
                    out[source_id] = record.scim_id
                continue
            if source_id in self.candidates:
                continue
            at = self._by_source.find(h64(source_id))
            if at >= 0 and self.source_ids[at] == source_id:
                row = int(self._link[at])
            else:  # not classified here (a rejected user): as the state store links it
                row = self._target_row(self.state.find(source_id))
            if row >= 0 and self.listed.active(row):
                out[source_id] = self.listed.scim_ids[row]
        return out

    def names_taken(
        self, desired: Iterable[DesiredUser], result: UserReconciliation
    ) -> list[Rejection]:
        """Users to be created whose userName a provisioned user in step already holds: the
        real run's plan (which sees every record) rejects them; the dry run's (which sees the
        truth records only) is told so."""
        taken = []
        for user in desired:
            holder = self.state.name_holder(user.user_name)
            if (
                holder is None
                or holder == user.source_id
                or holder in result.truth
                or holder in result.gone
                or self.state.find(user.source_id) >= 0
            ):
                continue
            record = self.records_of([holder]).get(holder)
            if record is not None and name_key(record.user_name) == name_key(user.user_name):
                taken.append(
                    Rejection(
                        user.source_id,
                        user.dn,
                        f"duplicate userName {user.user_name!r}: provisioned for "
                        f"{record.dn or record.source_id}",
                    )
                )
        return taken

    def partly_resolved(self, user: DesiredUser) -> DesiredUser:
        """The user with the references resolvable now resolved (the others left for the
        plan): what the dry run's plan sees, as the real run's plan would."""

        def resolve(dn: str) -> Any:
            return self.scim_id_of(dn) or {REFERENCE: dn}

        payload, _ = resolve_references(user.payload, resolve)
        return user if payload is user.payload else replace(user, payload=payload)


def reconcile_users(
    target: TargetConfig,
    dialect: Scim20,
    desired: list[DesiredUser],
    state: dict[str, StateRecord],
    listed: list[TargetUser],
    rejected: Iterable[Rejection] = (),
) -> UserReconciliation:
    """Classify every user of one target from lists in memory (what the flow does batch by
    batch with :class:`UserReconciler`); in-step users whose state record is right get no
    truth record: nothing about them changes."""
    rows = (
        UserRow(r.source_id, r.scim_id, r.user_name, r.content_hash, r.status, r.dn)
        for r in state.values()
    )
    reconciler = UserReconciler(
        target,
        dialect,
        TargetTable(listed),
        StateTable(rows),
        lambda ids: {i: state[i] for i in ids if i in state},
    )
    reconciler.add(desired, rejected)
    again = reconciler.link()
    reconciler.recheck(u for u in desired if u.source_id in again)
    return reconciler.classify()


def with_actual(record: StateRecord, actual: dict[str, Any], shape: Shape) -> StateRecord:
    """A truth record holding the target's actual managed values (so the plan's update or
    deprovisioning diffs against them)."""
    payload = project(actual, shape)
    if "schemas" in actual:
        payload = {"schemas": actual["schemas"], **payload}
    return StateRecord(
        record.source_id,
        record.scim_id,
        str(actual.get("userName") or record.user_name),
        content_hash(payload),
        payload,
        _status(actual.get("active", True) is not False),
    )


# -- groups ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetGroup:
    scim_id: str
    display_name: str
    external_id: str | None
    members: frozenset[str]


@dataclass(slots=True)
class GroupReconciliation(Findings):
    """The groups of one target: differences, and the truth to plan from."""

    OBJECT: ClassVar[str] = "group"
    CLASSES: ClassVar[tuple[str, ...]] = GROUP_CLASSES
    truth: dict[str, GroupRecord] = field(default_factory=dict)


def reconcile_groups(
    target: TargetConfig,
    desired: list[DesiredGroup],
    active: dict[str, str],
    state: dict[str, GroupRecord],
    listed: list[TargetGroup],
) -> GroupReconciliation:
    """Classify every group against the target and build the truth records (actual members
    and names), from which the normal group plan repairs the differences.

    ``active``: source id → SCIM id of the member users active on the target."""
    result = GroupReconciliation()
    by_id = {g.scim_id: g for g in listed}
    free = {g.scim_id: g for g in listed}
    for stored in state.values():
        free.pop(stored.scim_id, None)
    by_external: dict[str, list[TargetGroup]] = {}
    by_name: dict[str, list[TargetGroup]] = {}
    for candidate in free.values():
        if candidate.external_id:
            by_external.setdefault(candidate.external_id, []).append(candidate)
        by_name.setdefault(candidate.display_name, []).append(candidate)
    for group in desired:
        name = display_name(group, target)
        record = state.get(group.source_id)
        actual = by_id.get(record.scim_id) if record is not None else None
        how = "state"
        if actual is None:
            for table, key, via in (
                (by_external, group.source_id, "externalId"),
                (by_name, name, "displayName"),
            ):
                found = [g for g in table.get(key, []) if g.scim_id in free]
                if len(found) == 1:
                    actual, how = found[0], via
                    del free[actual.scim_id]
                    break
        if actual is None:
            if record is not None:
                result.note(
                    "stale state",
                    name,
                    group.source_id,
                    record.scim_id,
                    "the SCIM id no longer exists on the target",
                )
            else:
                result.note("missing on the target", name, group.source_id)
            continue
        if how != "state":
            result.note("re-linked", name, group.source_id, actual.scim_id, f"found by {how}")
        foreign = (record.foreign if record is not None else frozenset()) & actual.members
        result.truth[group.source_id] = GroupRecord(
            group.source_id, actual.scim_id, actual.display_name, actual.members, foreign
        )
        should = frozenset(active[s] for s in group.members if s in active)
        if target.membership_mode == "additive":
            should |= foreign
        drift = []
        if actual.display_name != name:
            result.note(
                "renamed on the target",
                name,
                group.source_id,
                actual.scim_id,
                f"the target calls it {actual.display_name!r}",
            )
            drift.append("name")
        if should != actual.members:
            extra, lacking = len(actual.members - should), len(should - actual.members)
            result.note(
                "membership drifted",
                name,
                group.source_id,
                actual.scim_id,
                f"{lacking} members missing, {extra} members not in the directory",
            )
            drift.append("members")
        if not drift and how == "state":
            result.note("in step", name, group.source_id, actual.scim_id)
    wanted = {g.source_id for g in desired}
    for source_id, stored in state.items():
        if source_id not in wanted and stored.scim_id in by_id:
            gone = by_id[stored.scim_id]  # gone from the directory: the plan deletes it
            result.truth[source_id] = GroupRecord(
                source_id, gone.scim_id, gone.display_name, gone.members, stored.foreign
            )
    for other in free.values():
        result.note("unmanaged", other.display_name, "", other.scim_id, "not ours; left alone")
    return result

"""Incremental change detection: read what changed in the directory since the last cycle.

One method per source (``source.change_detection``):

- ``full``: read every user each cycle (always correct; for directories with nothing better);
- ``timestamp``: ``(modifyTimestamp>=W)``, W the watermark; ``timestamp_no_negation``: strictly
  later, written ``(modifyTimestamp>=W+1s)`` (no ``!`` in the filter; can miss a change made
  in the same second as the last one seen). Deletions and users leaving the filter: a cheap
  id-only scan of the scope compared with the state store;
- ``ad_usn``: ``(uSNChanged>=N+1)``, N the DC's ``highestCommittedUSN`` read *before* the
  previous cycle's search; the DC's ``invocationId`` is kept with it, and another DC (or a
  restored one) forces a full pass. Deletions: tombstones (Show Deleted control); users moved
  or changed out of the filter: ids of every object changed under the naming context;
- ``syncrepl``: RFC 4533 refreshOnly with a cookie (OpenLDAP syncprov, with accesslog for
  deletions across restarts): changes and deleted entryUUIDs in one exchange; a cookie the
  server no longer honours gives a present phase (or e-syncRefreshRequired: a full refresh),
  from which deletions are computed against the state store.

The result, :class:`Changes`, holds the changed users (all of them after a full pass), the ids
known to be gone or present, and the watermark to store once the cycle's writes succeeded.
Watermarks are per target; a cycle starts from the oldest of its targets' watermarks (a change
seen twice costs nothing: the plan compares content hashes).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

import ldap3
from ldap3.core import exceptions as ldap_exc

from tasks.config import Config, LdapSource, TargetConfig
from tasks.errors import SourceError, SourceUnavailable
from tasks.ldap import syncrepl
from tasks.ldap.ad import guid_text
from tasks.ldap.extract import (
    Extraction,
    SourceUser,
    connect,
    directory_task,
    entry_to_user,
    log_warnings,
    mapped_attributes,
    paged_entries,
    source_id,
    user_attributes,
)
from tasks.state.store import StateStore, Watermark

Method = Literal["full", "timestamp", "timestamp_no_negation", "ad_usn", "syncrepl"]
SHOW_DELETED = "1.2.840.113556.1.4.417"
E_SYNC_REFRESH_REQUIRED = 4096
_GENERALIZED = "%Y%m%d%H%M%SZ"


@dataclass(frozen=True, slots=True)
class Start:
    """Where a cycle starts: a watermark, or a full pass and why."""

    watermark: Watermark | None
    why: str
    """For a full pass: why ("first cycle", "--full", "configuration changed"...)."""


class Identified(Protocol):
    @property
    def source_id(self) -> str: ...


E = TypeVar("E", bound=Identified)


@dataclass(frozen=True, slots=True)
class Changes(Generic[E]):
    """What one read of a stream (users or groups) found."""

    entries: list[E]
    """The changed objects in scope, or every object in scope after a full pass."""
    invalid: list[tuple[str, str]]
    """(dn, reason) of entries read that cannot be tracked."""
    complete: bool = True
    """True when ``entries`` holds every object in scope (a full pass)."""
    deleted: frozenset[str] = frozenset()
    """Ids the directory said are gone (deleted, or out of the scope or filter)."""
    present: frozenset[str] | None = None
    """Every id in scope, when an id scan (or a present phase) listed them."""
    changed_elsewhere: frozenset[str] = frozenset()
    """Ids of objects changed outside the scope or filter (AD): gone if provisioned."""
    watermark: Watermark | None = None
    """Where the next cycle starts, stored once this cycle's writes succeeded."""
    mode: str = ""
    """How the read was made, for the report."""
    seconds: float = 0.0
    searches: int = 0

    def gone(self, provisioned: Iterable[str]) -> set[str] | None:
        """Of the provisioned source ids, those no longer in scope; ``None`` after a full
        pass (then every provisioned object missing from ``entries`` is gone)."""
        if self.complete:
            return None
        seen = {e.source_id for e in self.entries}
        out: set[str] = set()
        for ident in provisioned:
            absent = self.present is not None and ident not in self.present
            if absent or ident in self.deleted or ident in self.changed_elsewhere:
                out.add(ident)
        return out - seen

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "read": len(self.entries),
            "gone": len(self.deleted),
            "directory_seconds": round(self.seconds, 3),
            "searches": self.searches,
        }


UserChanges = Changes[SourceUser]


def as_extraction(changes: Changes[SourceUser]) -> Extraction:
    return Extraction(changes.entries, changes.invalid)


# -- pure helpers -----------------------------------------------------------------------------


def fingerprint(source: LdapSource, target: TargetConfig, attributes: Iterable[str]) -> str:
    """What a watermark is valid for: the directory, the query and the target's mapping. A
    change to any of them (a new filter, a newly mapped attribute) needs a full pass."""
    users = source.users
    document = {
        "url": source.url,
        "users": [users.base_dn.lower(), users.filter, users.scope, users.id_attribute],
        "status": source.account_status.model_dump(mode="json"),
        "attributes": sorted(a.lower() for a in attributes),
        "mapping": target.mapping,
        "scim": [target.scim_version, target.dialect, target.provision_disabled_users],
    }
    if target.scope is not None and target.scope.users:  # a new scope: a full pass
        document["scope"] = target.scope.model_dump(
            mode="json", include={"users_filter", "member_of", "nested"}
        )
    text = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def start_of(
    method: Method,
    marks: dict[str, Watermark | None],
    fingerprints: dict[str, str],
    *,
    full: bool = False,
    full_because: str = "a full pass was asked for (--full)",
) -> Start:
    """Where a cycle over these targets starts: the oldest of their watermarks, or a full pass
    when one of them has none, was made for another config or method, or ``full`` is asked
    (``full_because`` says who asked)."""
    if method == "full":
        return Start(None, "change_detection is full")
    if full:
        return Start(None, full_because)
    usable: list[Watermark] = []
    for name, mark in marks.items():
        if mark is None:
            return Start(None, f"no watermark yet for {name}")
        if mark.method != method:
            return Start(None, f"change detection changed to {method} for {name}")
        if mark.server != fingerprints[name]:
            return Start(None, f"the source query or the mapping of {name} changed")
        usable.append(mark)
    if not usable:
        return Start(None, "no targets")
    if method == "syncrepl":
        if len({m.value for m in usable}) > 1:
            return Start(None, "the targets' syncrepl cookies differ")
        return Start(usable[0], "")
    if method == "ad_usn":
        dcs = {m.value.split(":", 1)[0] for m in usable}
        if len(dcs) > 1:
            return Start(None, "the targets' watermarks come from different domain controllers")
        return Start(min(usable, key=lambda m: int(m.value.split(":", 1)[1])), "")
    return Start(min(usable, key=lambda m: m.value), "")


def timestamp_filter(scope_filter: str, watermark: str, *, strictly_later: bool) -> str:
    """The scope filter restricted to entries modified at or after (or after) ``watermark``."""
    since = watermark
    if strictly_later:
        moment = datetime.strptime(watermark, _GENERALIZED).replace(tzinfo=UTC)
        since = (moment + timedelta(seconds=1)).strftime(_GENERALIZED)
    return f"(&{scope_filter}(modifyTimestamp>={since}))"


def generalized_time(value: str) -> datetime:
    """An LDAP GeneralizedTime (``20261129220000Z``, ``20261129220000.0Z``, ``...+0100``) in UTC."""
    text = value.strip()
    moment = datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    zone = text[14:].lstrip(".,0123456789")
    if len(zone) >= 5 and zone[0] in "+-":
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        moment = moment - offset if zone[0] == "+" else moment + offset
    return moment


def next_timestamp(
    seen: Iterable[str], previous: str | None, started: datetime, overlap: float
) -> str:
    """The timestamp watermark after a cycle: the latest modifyTimestamp seen, but never later
    than the cycle's start minus ``overlap`` seconds (an entry changed during a paged search,
    or a directory clock a little ahead of ours, is then read again next cycle, not missed),
    and never earlier than ``previous``."""
    cap = started - timedelta(seconds=overlap)
    latest = max((generalized_time(v) for v in seen), default=None)
    if latest is None:  # nothing changed: the directory's clock told us nothing new
        return previous or cap.strftime(_GENERALIZED)
    mark = min(latest, cap)
    if previous is not None and mark <= generalized_time(previous):
        return previous
    return mark.strftime(_GENERALIZED)


# -- reading -------------------------------------------------------------------------------


class Query(Protocol):
    """Where the objects of a stream are: the users' or the groups' query."""

    @property
    def base_dn(self) -> str: ...
    @property
    def filter(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def id_attribute(self) -> str | None: ...


Raw = dict[str, list[bytes]]


@dataclass(slots=True)
class Reader(Generic[E]):
    """Reads one stream: turns raw entries into objects (users or groups), counts searches."""

    conn: ldap3.Connection
    source: LdapSource
    query: Query
    wanted: set[str]
    convert: Callable[[str, Raw], E | tuple[str, str]]
    entries: list[E] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    searches: int = 0

    @property
    def id_attribute(self) -> str:
        return self.query.id_attribute or "entryUUID"

    def add(self, dn: str, raw: Raw) -> None:
        result = self.convert(dn, raw)
        if isinstance(result, tuple):
            self.invalid.append(result)
        else:
            self.entries.append(result)

    def search(
        self, filter_: str, attributes: Iterable[str], base: str | None = None
    ) -> Iterator[tuple[str, Raw]]:
        """A paged search of the scope (or of all of ``base``, when given)."""
        self.searches += 1
        scope = self.query.scope if base is None else "subtree"
        yield from paged_entries(
            self.conn, self.source, base or self.query.base_dn, filter_, scope, attributes
        )

    def read(self, filter_: str, *, extra: Iterable[str] = ()) -> dict[str, list[str]]:
        """Read the objects matching ``filter_`` in scope; return the ``extra`` attributes'
        values (popped from the entries) by attribute."""
        popped: dict[str, list[str]] = {name: [] for name in extra}
        mapped = {w.lower() for w in self.wanted}
        for dn, raw in self.search(filter_, [*self.wanted, *extra]):
            for name in popped:
                values = _pop(raw, name)
                popped[name] += [v.decode() for v in values]
                if name.lower() in mapped:  # the mappings read it too: keep it
                    raw[name] = values
            self.add(dn, raw)
        return popped

    def ids(self, filter_: str, base: str | None = None) -> frozenset[str]:
        """The ids of the objects matching ``filter_``, reading nothing else."""
        found: set[str] = set()
        for _dn, raw in self.search(filter_, [self.id_attribute], base):
            values = _pop(raw, self.id_attribute)
            if values:
                found.add(source_id(self.id_attribute, values))
        return frozenset(found)

    def changes(self, **fields: Any) -> Changes[E]:
        return Changes(self.entries, self.invalid, searches=self.searches, **fields)


def _pop(raw: Raw, name: str) -> list[bytes]:
    for key in list(raw):
        if key.lower() == name.lower():
            return raw.pop(key)
    return []


def _read_full(reader: Reader[E], start: Start) -> Changes[E]:
    reader.read(reader.query.filter)
    return reader.changes(complete=True, mode=f"full pass ({start.why})")


def _read_timestamp(reader: Reader[E], start: Start, method: Method) -> Changes[E]:
    query = reader.query
    started = datetime.now(UTC)
    previous = start.watermark.value if start.watermark else None
    present: frozenset[str] | None = None
    filter_ = query.filter
    if previous is not None:
        present = reader.ids(query.filter)
        filter_ = timestamp_filter(
            query.filter, previous, strictly_later=method == "timestamp_no_negation"
        )
    stamps = reader.read(filter_, extra=["modifyTimestamp"])["modifyTimestamp"]
    value = next_timestamp(stamps, previous, started, reader.source.timestamp_overlap_seconds)
    mode = f"full pass ({start.why})" if previous is None else f"changes since {previous}"
    return reader.changes(
        complete=previous is None,
        present=present,
        watermark=Watermark(method, value),
        mode=mode,
    )


def _root_dse(conn: ldap3.Connection, attributes: list[str]) -> Raw:
    try:
        conn.search("", "(objectClass=*)", ldap3.BASE, attributes=attributes)
    except ldap_exc.LDAPException as exc:
        raise SourceError(f"reading the root DSE failed: {exc}") from exc
    for item in conn.response or []:
        if item.get("type") == "searchResEntry":
            return {k.lower(): list(v) for k, v in item["raw_attributes"].items()}
    return {}


def dc_state(conn: ldap3.Connection) -> tuple[str, int, str]:
    """(invocationId, highestCommittedUSN, defaultNamingContext) of the DC we talk to."""
    root = _root_dse(conn, ["highestCommittedUSN", "dsServiceName", "defaultNamingContext"])
    try:
        usn = int(root["highestcommittedusn"][0])
        service = root["dsservicename"][0].decode()
        naming = root["defaultnamingcontext"][0].decode()
    except (KeyError, IndexError, ValueError) as exc:
        raise SourceError(
            "the directory has no highestCommittedUSN/dsServiceName in its root DSE: "
            "change_detection ad_usn needs Active Directory"
        ) from exc
    try:
        conn.search(service, "(objectClass=*)", ldap3.BASE, attributes=["invocationId"])
    except ldap_exc.LDAPException as exc:
        raise SourceError(f"reading the invocationId of {service!r} failed: {exc}") from exc
    for item in conn.response or []:
        raw = {k.lower(): v for k, v in item.get("raw_attributes", {}).items()}
        if raw.get("invocationid"):
            return guid_text(raw["invocationid"][0]), usn, naming
    raise SourceError(f"cannot read the invocationId of {service!r}")


def tombstones(reader: Reader[Any], naming: str, since: str) -> frozenset[str]:
    """Ids of objects deleted since (``since``: a uSNChanged filter), from their tombstones."""
    reader.searches += 1
    found: set[str] = set()
    try:
        results = reader.conn.extend.standard.paged_search(
            naming,
            f"(&(isDeleted=TRUE){since})",
            search_scope=ldap3.SUBTREE,
            dereference_aliases=ldap3.DEREF_NEVER,
            attributes=[reader.id_attribute],
            controls=[(SHOW_DELETED, True, None)],
            paged_size=reader.source.page_size,
            generator=True,
        )
        for item in results:
            if item.get("type") == "searchResEntry":
                values = _pop(dict(item["raw_attributes"]), reader.id_attribute)
                if values:
                    found.add(source_id(reader.id_attribute, values))
    except (ldap_exc.LDAPCommunicationError, ldap_exc.LDAPResponseTimeoutError) as exc:
        raise SourceUnavailable(f"LDAP server {reader.source.url} went away: {exc}") from exc
    except ldap_exc.LDAPException as exc:
        raise SourceError(f"reading deleted objects (tombstones) failed: {exc}") from exc
    return frozenset(found)


def _read_ad_usn(reader: Reader[E], start: Start) -> Changes[E]:
    invocation, highest, naming = dc_state(reader.conn)
    reader.searches += 2
    previous: int | None = None
    why = start.why
    if start.watermark is not None:
        dc, _, usn = start.watermark.value.partition(":")
        if dc != invocation:
            why = f"the domain controller changed (invocationId {dc} → {invocation})"
        else:
            previous = int(usn)
    mark = Watermark("ad_usn", f"{invocation}:{highest}")
    if previous is None:
        reader.read(reader.query.filter)
        return reader.changes(complete=True, watermark=mark, mode=f"full pass ({why})")
    since = f"(uSNChanged>={previous + 1})"
    # Everything changed in the domain first, then what of it is in scope: an object changed
    # between the two searches is then in the second (still in scope) or in neither (read
    # next cycle), never taken for one that left the scope.
    elsewhere = reader.ids(since, base=naming)
    reader.read(f"(&{reader.query.filter}{since})")
    return reader.changes(
        complete=False,
        deleted=tombstones(reader, naming, since),
        changed_elsewhere=elsewhere,
        watermark=mark,
        mode=f"changes since USN {previous} of DC {invocation}",
    )


def _refresh(
    reader: Reader[Any], cookie: bytes | None
) -> tuple[list[tuple[str, Raw]], set[str], set[str], syncrepl.DoneValue]:
    """One refreshOnly exchange: (entries with attributes, present ids, deleted ids, done)."""
    query = reader.query
    reader.searches += 1
    entries: list[tuple[str, Raw]] = []
    present: set[str] = set()
    deleted: set[str] = set()
    conn = reader.conn
    try:
        conn.search(
            query.base_dn,
            query.filter,
            search_scope=ldap3.SUBTREE if query.scope == "subtree" else ldap3.LEVEL,
            dereference_aliases=ldap3.DEREF_NEVER,
            attributes=sorted(reader.wanted),
            controls=[(syncrepl.SYNC_REQUEST, True, syncrepl.sync_request_value(cookie))],
        )
    except (ldap_exc.LDAPCommunicationError, ldap_exc.LDAPResponseTimeoutError) as exc:
        raise SourceUnavailable(f"LDAP server {reader.source.url} went away: {exc}") from exc
    for item in conn.response or []:
        kind = item.get("type")
        if kind == "searchResEntry":
            control = (item.get("controls") or {}).get(syncrepl.SYNC_STATE)
            state = syncrepl.sync_state(control["value"]) if control else None
            if state is not None and state.state == "delete":
                deleted.add(state.entry_uuid)
            elif state is not None and state.state == "present" and not item["raw_attributes"]:
                present.add(state.entry_uuid)
            else:
                entries.append((item["dn"], dict(item["raw_attributes"])))
        elif kind == "intermediateResponse" and item.get("responseName") == syncrepl.SYNC_INFO:
            info = syncrepl.sync_info(item.get("responseValue") or b"")
            if info.kind == "syncIdSet":
                (deleted if info.refresh_deletes else present).update(info.uuids)
    control = (conn.result.get("controls") or {}).get(syncrepl.SYNC_DONE)
    done = syncrepl.sync_done(control["value"]) if control else syncrepl.DoneValue(None, True)
    return entries, present, deleted, done


def _read_syncrepl(reader: Reader[E], start: Start) -> Changes[E]:
    reader.wanted.add(reader.id_attribute)
    cookie = start.watermark.value.encode() if start.watermark else None
    why = start.why
    try:
        entries, present, deleted, done = _refresh(reader, cookie)
    except ldap_exc.LDAPOperationResult as exc:
        if exc.result != E_SYNC_REFRESH_REQUIRED or cookie is None:
            raise SourceError(f"syncrepl refresh failed: {exc}") from exc
        why, cookie = "the directory asked for a full refresh (e-syncRefreshRequired)", None
        entries, present, deleted, done = _refresh(reader, None)
    for dn, raw in entries:
        reader.add(dn, raw)
    complete = cookie is None
    ids_present: frozenset[str] | None = None
    if cookie is not None and not done.refresh_deletes:
        # a present phase: the server listed what is there; everything else is gone
        ids_present = frozenset(present | {e.source_id for e in reader.entries})
        mode = "syncrepl present phase (the cookie was older than the change log)"
    elif complete:
        mode = f"full pass ({why})"
    else:
        mode = "syncrepl changes since the cookie"
    value = (done.cookie or cookie or b"").decode()
    return reader.changes(
        complete=complete,
        deleted=frozenset(deleted),
        present=ids_present,
        watermark=Watermark("syncrepl", value) if value else None,
        mode=mode,
    )


def read_changes(reader: Reader[E], start: Start) -> Changes[E]:
    """Read the objects changed since ``start`` (every one when it has no watermark)."""
    began = time.monotonic()
    method = cast(Method, reader.source.change_detection)
    if method == "syncrepl":
        changes = _read_syncrepl(reader, start)
    elif method == "ad_usn":
        changes = _read_ad_usn(reader, start)
    elif method in ("timestamp", "timestamp_no_negation"):
        changes = _read_timestamp(reader, start, method)
    else:
        changes = _read_full(reader, start)
    return replace(changes, seconds=time.monotonic() - began, searches=reader.searches)


def user_reader(
    conn: ldap3.Connection, source: LdapSource, attributes: Iterable[str]
) -> Reader[SourceUser]:
    """A reader of the users in scope, with the attributes the mappings need."""
    return Reader(
        conn,
        source,
        source.users,
        user_attributes(source, attributes),
        lambda dn, raw: entry_to_user(source, dn, raw),
    )


def _read_users_changed(source: LdapSource, attributes: list[str], start: Start) -> UserChanges:
    conn = connect(source)
    try:
        return read_changes(user_reader(conn, source, attributes), start)
    finally:
        conn.unbind()


def _prefetch_key(source: LdapSource, attributes: list[str], start: Start) -> str:
    return json.dumps([source.model_dump_json(), attributes, repr(start)])


_prefetched: dict[str, Future[UserChanges]] = {}
_prefetch_lock = threading.Lock()


def prefetch_changes(source: LdapSource, attributes: list[str], start: Start) -> None:
    """Start reading the users changed since ``start`` now, in a thread (while Prefect's
    temporary server boots); :func:`extract_changes` with the same inputs takes the result
    instead of reading again. The read is the same call at an earlier moment: a watermark
    taken from it is only earlier, so nothing is missed."""
    key = _prefetch_key(source, attributes, start)
    with _prefetch_lock:
        if key in _prefetched:
            return
        future: Future[UserChanges] = Future()
        _prefetched[key] = future

    def read() -> None:
        try:
            future.set_result(_read_users_changed(source, attributes, start))
        except BaseException as exc:  # handed to the task, which raises it as its own
            future.set_exception(exc)

    threading.Thread(target=read, name="prefetch-users", daemon=True).start()


def _take_prefetched(source: LdapSource, attributes: list[str], start: Start) -> UserChanges | None:
    with _prefetch_lock:
        future = _prefetched.pop(_prefetch_key(source, attributes, start), None)
    return future.result() if future is not None else None


@directory_task("extract-from-LDAP")
def extract_changes(source: LdapSource, attributes: list[str], start: Start) -> UserChanges:
    """Read the users changed since ``start`` (everyone on a full pass); cached per flow run,
    so a retried run starts from the same watermark and reads the same changes. A read
    started earlier with the same inputs (:func:`prefetch_changes`) is taken instead."""
    changes = _take_prefetched(source, attributes, start)
    early = changes is not None
    if changes is None:
        changes = _read_users_changed(source, attributes, start)
    logger = log_warnings(changes.entries)
    logger.info(
        "%s: %d users read, %d gone, %d without a usable id (%d searches, %.2f s%s)",
        changes.mode,
        len(changes.entries),
        len(changes.deleted),
        len(changes.invalid),
        changes.searches,
        changes.seconds,
        "; read while Prefect started" if early else "",
    )
    return changes


def user_start(
    config: Config, targets: list[TargetConfig], store: StateStore, *, full: bool
) -> tuple[list[str], dict[str, str], Start]:
    """What the users' read of a run asks for: the attributes, each target's fingerprint,
    and where the cycle starts (the oldest of the targets' watermarks)."""
    source = config.source
    attributes = sorted(mapped_attributes(t.mapping for t in targets))
    prints = {t.name: fingerprint(source, t, attributes) for t in targets}
    marks = {t.name: store.watermark(t.name, "users") for t in targets}
    start = start_of(source.change_detection, marks, prints, full=full)  # type: ignore[arg-type]
    return attributes, prints, start


def prefetch_users(config: Config, target: str | None, *, full: bool) -> None:
    """Start the directory read a ``sync`` of these targets will make, now (the flow takes
    it): the read overlaps Prefect's temporary server booting. Anything unclear (a state
    store not there yet, a bad target name) leaves it to the flow."""
    secret = config.source.bind_password
    if secret is not None and secret.prefect_secret is not None:
        return  # a Prefect Secret block needs the server that is still starting
    try:
        store = StateStore(config.state.url, read_only=True)
        try:
            attributes, _, start = user_start(config, config.target(target), store, full=full)
        finally:
            store.close()
    except Exception:  # the flow reports it, in its run
        return
    prefetch_changes(config.source, attributes, start)

"""A scim2-server storage in one SQLite file, to serve a million users in linear time.

scim2-server's :class:`~scim2_server.memory.InMemoryStorage` keeps pydantic models (gigabytes
at a million users) and sorts every resource again for each page. :class:`SqliteStorage` keeps
each resource as a row of JSON and reads only the rows of the page, so listing every resource,
page by page, is linear in their number:

- a search without filter nor sort pages in ``seq`` order, by ``startIndex``/``count``
  (``LIMIT``/``OFFSET`` on an index) or by cursor (the position is the last ``seq`` of the
  page, the next page is ``WHERE seq > ?``); ``totalResults`` is read from
  ``resource_counts``, which triggers keep (a ``COUNT(*)`` took 25 ms per page at 200,000
  users, and grows with them);
- a search with a filter or a sort (the default service provider configuration announces
  sorting) loads every resource of the searched types, keeps those ``ScimFilter.match``
  keeps and sorts them by their sort value, then ``seq``: slow, but right for any filter.
  A filter comparing a unique attribute with ``eq`` (``userName eq "bjensen"``) reads only the
  resource that holds the value.

The layout (others rely on it, e.g. ``tests/bench``)::

    CREATE TABLE resources (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                            resource_type TEXT NOT NULL, body TEXT NOT NULL)
    CREATE INDEX resources_by_type ON resources (resource_type, seq)
    CREATE TABLE unique_values (urn TEXT NOT NULL, value TEXT NOT NULL,
                                resource_id TEXT NOT NULL, PRIMARY KEY (urn, value))
    CREATE TABLE resource_counts (resource_type TEXT PRIMARY KEY, n INTEGER NOT NULL)
    -- plus triggers on resources: a deleted resource's unique values go, and
    -- resource_counts follows every insert and delete (raw SQL ones too)

``body`` is the whole stored resource (``id``, ``meta`` with ``resourceType``, ``created``,
``lastModified`` and ``version``, ``schemas``, attributes) as ``model_dump(mode="json")`` gives
it, re-validated by the model of its resource type on every read. ``meta.location`` is never
stored: the server fills it.

``unique_values`` holds, for each attribute whose uniqueness is ``server`` or ``global``
(``userName`` with the default schemas), the value of each resource in the form comparisons
use (lowercase unless ``caseExact``, JSON-encoded), under the URN of the attribute: as for
``InMemoryStorage`` (RFC 7643 erratum 8279), two resources whose schema declares the attribute
clash when they hold the same value, whatever their resource type. Its primary key refuses a
taken value (:class:`~scim2_models.UniquenessException`). A row written into ``resources``
by hand, without its unique values, is served but neither checked for uniqueness nor found by
the ``eq`` shortcut above; :func:`seed` writes both.

Versions are ``W/"<random hex>"``, new on every write. Every method is its own transaction
(writes take ``BEGIN IMMEDIATE``, so the version check and the write are atomic across
processes too); :meth:`SqliteStorage.operation` also holds a lock of the storage for the whole
SCIM operation, as ``InMemoryStorage`` does, so that the read-modify-write of a PUT or a PATCH
is never interrupted by another thread of the process (no spurious 412). Each thread has its
own connection; the file is in WAL mode.
"""

from __future__ import annotations

import datetime
import functools
import json
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Union, cast

from scim2_models import (
    AttributeBinding,
    InvalidCursorException,
    Meta,
    NotFoundException,
    PreconditionFailedException,
    Resource,
    ResourceType,
    ResponseParameters,
    ScimFilter,
    ScimPolicy,
    ScimProvider,
    SearchRequest,
    Uniqueness,
    UniquenessException,
)
from scim2_models import Path as ScimPath
from scim2_models.path import CompareOperator, Comparison
from scim2_server.storage import ScimStorage, SearchPage
from scim2_server.utils import load_default_provider, parametrize

TABLES = [
    """CREATE TABLE IF NOT EXISTS resources (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        resource_type TEXT NOT NULL,
        body TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS resources_by_type ON resources (resource_type, seq)",
    """CREATE TABLE IF NOT EXISTS unique_values (
        urn TEXT NOT NULL,
        value TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        PRIMARY KEY (urn, value)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS unique_values_by_resource ON unique_values (resource_id)",
]
COUNTS = """CREATE TABLE resource_counts (
    resource_type TEXT PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID"""
TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS resources_deleted AFTER DELETE ON resources BEGIN
        DELETE FROM unique_values WHERE resource_id = old.id;
        UPDATE resource_counts SET n = n - 1 WHERE resource_type = old.resource_type;
    END""",
    """CREATE TRIGGER IF NOT EXISTS resources_inserted AFTER INSERT ON resources BEGIN
        INSERT INTO resource_counts (resource_type, n) VALUES (new.resource_type, 1)
        ON CONFLICT (resource_type) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS resources_retyped AFTER UPDATE OF resource_type ON resources
    BEGIN
        UPDATE resource_counts SET n = n - 1 WHERE resource_type = old.resource_type;
        INSERT INTO resource_counts (resource_type, n) VALUES (new.resource_type, 1)
        ON CONFLICT (resource_type) DO UPDATE SET n = n + 1;
    END""",
]

BUSY_TIMEOUT_SECONDS = 30.0

Row = tuple[int, str, str]
"""``seq``, ``resource_type`` and ``body`` of a stored resource."""

SortKey = tuple[Any, ...]
"""How a search orders the resources it found: ``(seq,)`` unsorted, else
``(missing, sort value, seq)``."""


def utcnow() -> datetime.datetime:
    """Return the current date, in UTC."""
    return datetime.datetime.now(datetime.UTC)


def new_version() -> str:
    """Return the version of a new write: two writes never share one."""
    return f'W/"{secrets.token_hex(16)}"'


def json_datetime(moment: datetime.datetime) -> str:
    """Return a date as ``model_dump(mode="json")`` writes it (UTC as ``Z``)."""
    return moment.isoformat().replace("+00:00", "Z")


def connect(path: str | Path) -> sqlite3.Connection:
    """Open the file in autocommit mode (transactions are explicit), creating what is missing.

    ``resource_counts`` (kept by the triggers) is filled from ``resources`` when it is created,
    so a file whose ``resources`` were written without it still counts right.
    """
    connection = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_SECONDS,
        isolation_level=None,
        check_same_thread=False,  # used by one thread, but SqliteStorage.close may run elsewhere
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    with transaction(connection, "IMMEDIATE"):
        for statement in TABLES:
            connection.execute(statement)
        counted = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'resource_counts'"
        ).fetchone()
        if counted is None:
            connection.execute(COUNTS)
            connection.execute(
                "INSERT INTO resource_counts (resource_type, n) "
                "SELECT resource_type, COUNT(*) FROM resources GROUP BY resource_type"
            )
        for statement in TRIGGERS:
            connection.execute(statement)
    return connection


@contextmanager
def transaction(connection: sqlite3.Connection, mode: str = "") -> Iterator[sqlite3.Connection]:
    """Run a block in one transaction (``mode`` ``IMMEDIATE`` for writes): commit, or roll back."""
    connection.execute(f"BEGIN {mode}")
    try:
        yield connection
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


# -- Unique values -----------------------------------------------------------


class UniqueAttributes:
    """The attributes of a model whose values are unique, and how to read them from SCIM JSON."""

    def __init__(self, model: type[Resource[Any]], policy: ScimPolicy) -> None:
        self.policy = policy
        self.bindings: list[tuple[AttributeBinding, str | None, str]] = []
        paths = parametrize(ScimPath, model).iter_paths(
            include_subattributes=False, uniqueness=[Uniqueness.server, Uniqueness.global_]
        )
        core_schema = (model.__schema__ or "").lower()
        for path in paths:
            binding = cast(AttributeBinding, path.resolve())
            schema = (getattr(binding.model, "__schema__", None) or "").lower()
            name = binding.urn[len(schema) + 1 :] if schema else binding.urn
            self.bindings.append((binding, None if schema == core_schema else schema, name))
        self.urns = frozenset(binding.urn for binding, _, _ in self.bindings)

    def values(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        """Return ``(urn, encoded comparable value)`` for each unique attribute the body holds.

        An extension attribute is read under the URN of its extension; keys are matched
        without their case, as SCIM attribute names are.
        """
        found = []
        for binding, extension, name in self.bindings:
            container: Any = body if extension is None else _get_nocase(body, extension)
            value = _get_nocase(container, name) if isinstance(container, dict) else None
            encoded = self.encode(binding, value)
            if encoded is not None:
                found.append((binding.urn, encoded))
        return found

    def encode(self, binding: AttributeBinding, value: Any) -> str | None:
        """Return a value in the form ``unique_values`` holds it, or None (a missing value
        never clashes, nor does a string the policy cannot compare)."""
        if value is None:
            return None
        try:
            comparable = binding.comparable(value, policy=self.policy)
        except ValueError:
            return None
        return json.dumps(comparable, sort_keys=True, separators=(",", ":"), default=str)


def _get_nocase(container: dict[str, Any], key: str) -> Any:
    """Return the value of a key of a dict, the key matched without its case."""
    if key in container:
        return container[key]
    lowered = key.lower()
    return next((value for name, value in container.items() if name.lower() == lowered), None)


def _equality(scim_filter: ScimFilter[Any] | None) -> tuple[AttributeBinding, str] | None:
    """Return the attribute and the value of a filter that compares a single-valued string
    attribute to a string with ``eq``, or None."""
    if scim_filter is None or scim_filter.model is None:
        return None
    node = scim_filter.ast
    if (
        not isinstance(node, Comparison)
        or node.op != CompareOperator.eq
        or not isinstance(node.value, str)
    ):
        return None
    binding = scim_filter.resolve_comparison(node.attr_path, strict=False)
    if binding is None or binding.is_multivalued or binding.target_type is not str:
        return None
    return binding, node.value


# -- Cursor positions --------------------------------------------------------


def _position(direction: str, key: SortKey) -> dict[str, Any]:
    """Return the position of the page that starts after, or ends before, a sort key."""
    if len(key) == 1:
        return {"d": direction, "s": key[0]}
    missing, value, seq = key
    return {"d": direction, "k": None if missing else _encode(value), "s": seq}


def _read_position(position: Any, sorted_: bool) -> tuple[str, SortKey]:
    """Return the direction and the sort key of a position :func:`_position` gave."""
    try:
        direction, seq = position["d"], position["s"]
        value = position["k"] if sorted_ else None
    except (TypeError, KeyError):
        raise InvalidCursorException from None
    if direction not in ("next", "previous") or type(seq) is not int:
        raise InvalidCursorException
    if not sorted_:
        return direction, (seq,)
    if value is None:
        return direction, (True, "", seq)
    return direction, (False, _decode(value), seq)


def _encode(value: Any) -> Any:
    """Return a sort value in a form JSON can hold."""
    if isinstance(value, datetime.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, str | bool | int | float):
        return value
    raise TypeError(f"A cursor cannot hold a sort value of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    """Return the sort value that :func:`_encode` gave."""
    if not isinstance(value, dict):
        return value
    try:
        return datetime.datetime.fromisoformat(value["datetime"])
    except (KeyError, TypeError, ValueError):
        raise InvalidCursorException from None


def _cursor_bounds(
    keys: Sequence[SortKey], position: Any, count: int | None, descending: bool, sorted_: bool
) -> tuple[int, int]:
    """Return the slice of the ordered keys that a cursor page covers."""
    if position is None:
        return 0, len(keys) if count is None else min(count, len(keys))
    direction, anchor = _read_position(position, sorted_)

    def before(key: SortKey) -> bool:
        return key > anchor if descending else key < anchor

    if direction == "next":
        start = sum(1 for key in keys if before(key) or key == anchor)
        return start, len(keys) if count is None else min(start + count, len(keys))
    stop = sum(1 for key in keys if before(key))
    return (0 if count is None else max(stop - count, 0)), stop


# -- Storage -----------------------------------------------------------------


class SqliteStorage(ScimStorage):
    """A scim2-server storage in one SQLite file (see the module docstring).

    :param path: The SQLite file, created with its tables when missing.
    :param provider: Describes the service; gives the model of each resource type (to
        re-validate the stored JSON), its unique attributes and the comparison policy.
    :param clock: Return the date of a write, for ``meta.created`` and ``meta.lastModified``.
    """

    supports_cursors = True

    def __init__(
        self,
        path: str | Path,
        provider: ScimProvider,
        clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.path = Path(path)
        self.provider = provider
        self.clock = clock
        self.lock = threading.RLock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._models: dict[str, type[Resource[Any]]] = {}
        self._unique: dict[str, UniqueAttributes] = {}
        self._connection()  # creates the file and the tables now, not on the first request

    # -- Plumbing --

    def _connection(self) -> sqlite3.Connection:
        """Return the connection of the current thread, opening it on first use."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect(self.path)
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        """Close the connections of every thread (the storage is unusable afterwards)."""
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    def model(self, resource_type_name: str) -> type[Resource[Any]]:
        """Return the model of a resource type, by its name."""
        model = self._models.get(resource_type_name)
        if model is None:
            found = self.provider.model_for(resource_type_name)
            if found is None:
                raise NotFoundException(detail=f"unknown resource type {resource_type_name!r}")
            model = self._models[resource_type_name] = cast(type[Resource[Any]], found)
        return model

    def unique_attributes(self, resource_type_name: str) -> UniqueAttributes:
        """Return the unique attributes of a resource type, by its name."""
        unique = self._unique.get(resource_type_name)
        if unique is None:
            unique = UniqueAttributes(self.model(resource_type_name), self.provider.policy)
            self._unique[resource_type_name] = unique
        return unique

    def _load(self, resource_type_name: str, body: str) -> Resource[Any]:
        return self.model(resource_type_name).model_validate_json(body)

    def generate_id(self, resource_type: ResourceType, resource: Resource[Any]) -> str:
        """Return the identifier of a new resource."""
        return uuid.uuid4().hex

    @contextmanager
    def operation(self) -> Generator[None]:
        """Hold the lock of the storage for the whole SCIM operation."""
        with self.lock:
            yield

    def wipe(self) -> None:
        """Delete every resource (``seq`` keeps growing: cursors never see a reused one)."""
        with self.lock, transaction(self._connection(), "IMMEDIATE") as db:
            db.execute("DELETE FROM unique_values")
            db.execute("DELETE FROM resources")

    # -- Reading --

    def get(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        response_parameters: ResponseParameters[Any] | None = None,
    ) -> Resource[Any]:
        name = cast(str, resource_type.name)
        row = (
            self._connection()
            .execute(
                "SELECT body FROM resources WHERE id = ? AND resource_type = ?",
                (resource_id, name),
            )
            .fetchone()
        )
        if row is None:
            raise NotFoundException(detail=f"{name} {resource_id!r} not found")
        return self._load(name, row[0])

    def search(
        self,
        resource_types: list[ResourceType],
        search_request: SearchRequest[Any],
        *,
        position: Any = None,
    ) -> SearchPage:
        names = list(dict.fromkeys(cast(str, rt.name) for rt in resource_types))
        if not names:
            return SearchPage(0, [])
        with transaction(self._connection()) as db:  # one snapshot for the page and its count
            if search_request.filter is None and search_request.sort_by is None:
                return self._search_in_order(db, names, search_request, position)
            return self._search_everything(db, names, search_request, position)

    def _search_in_order(
        self,
        db: sqlite3.Connection,
        names: list[str],
        search_request: SearchRequest[Any],
        position: Any,
    ) -> SearchPage:
        """Page the resources of the types in ``seq`` order, reading only the page's rows."""
        marks = ",".join("?" * len(names))
        of_types = f"resource_type IN ({marks})"
        (total,) = db.execute(
            f"SELECT COALESCE(SUM(n), 0) FROM resource_counts WHERE {of_types}", names
        ).fetchone()
        count = search_request.count
        limit = -1 if count is None else count

        if search_request.cursor is None:
            offset = search_request.start_index_0 or 0
            # skip on the (resource_type, seq) index alone, then read the page's rows
            rows = db.execute(
                f"SELECT seq, resource_type, body FROM resources WHERE {of_types} AND seq >= "
                f"(SELECT seq FROM resources WHERE {of_types} ORDER BY seq LIMIT 1 OFFSET ?) "
                "ORDER BY seq LIMIT ?",
                [*names, *names, offset, limit],
            ).fetchall()
            return SearchPage(total, self._resources(rows))

        if count == 0:
            return SearchPage(total, [])
        if position is None:
            direction, anchor = "next", 0
        else:
            direction, (anchor,) = _read_position(position, sorted_=False)
        fetched = -1 if count is None else count + 1
        if direction == "next":
            rows = db.execute(
                f"SELECT seq, resource_type, body FROM resources WHERE {of_types} AND seq > ? "
                "ORDER BY seq LIMIT ?",
                [*names, anchor, fetched],
            ).fetchall()
            more_after = count is not None and len(rows) > count
            rows = rows[:count]
            more_before = bool(rows) and self._exists(db, of_types, names, "<", rows[0][0])
        else:
            rows = db.execute(
                f"SELECT seq, resource_type, body FROM resources WHERE {of_types} AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                [*names, anchor, fetched],
            ).fetchall()
            more_before = count is not None and len(rows) > count
            rows = rows[:count][::-1]
            more_after = bool(rows) and self._exists(db, of_types, names, ">", rows[-1][0])
        page = SearchPage(total, self._resources(rows))
        if rows and more_after:
            page.next = _position("next", (rows[-1][0],))
        if rows and more_before:
            page.previous = _position("previous", (rows[0][0],))
        return page

    @staticmethod
    def _exists(
        db: sqlite3.Connection, of_types: str, names: list[str], operator: str, seq: int
    ) -> bool:
        """Tell whether a resource of the types has a ``seq`` before (``<``) or after (``>``)."""
        row = db.execute(
            f"SELECT 1 FROM resources WHERE {of_types} AND seq {operator} ? LIMIT 1",
            [*names, seq],
        ).fetchone()
        return row is not None

    def _search_everything(
        self,
        db: sqlite3.Connection,
        names: list[str],
        search_request: SearchRequest[Any],
        position: Any,
    ) -> SearchPage:
        """Filter and sort every resource of the types in Python, then page them."""
        scim_filter = search_request.filter
        candidates = [
            (row[0], self._load(row[1], row[2]))
            for row in self._candidate_rows(db, names, scim_filter)
        ]
        if scim_filter is not None and not scim_filter.models and candidates:
            # a search at the root: the filter applies to the models of every type found
            models = tuple(dict.fromkeys(type(resource) for _, resource in candidates))
            scim_filter = parametrize(ScimFilter, Union[models])(str(scim_filter))  # noqa: UP007
        found = [
            (seq, resource)
            for seq, resource in candidates
            if scim_filter is None or scim_filter.match(resource)
        ]

        sorted_ = search_request.sort_by is not None
        descending = sorted_ and search_request.sort_order == SearchRequest.SortOrder.descending

        def key(seq: int, resource: Resource[Any]) -> SortKey:
            if not sorted_:
                return (seq,)
            value = search_request.sort_value(resource)
            return value is None, value if value is not None else "", seq

        pairs = sorted(
            ((key(seq, resource), resource) for seq, resource in found),
            key=lambda pair: pair[0],
            reverse=descending,
        )
        resources = [resource for _, resource in pairs]
        if search_request.cursor is None:
            start = search_request.start_index_0 or 0
            stop = None if search_request.count is None else start + search_request.count
            return SearchPage(len(resources), resources[start:stop])
        if search_request.count == 0:
            return SearchPage(len(resources), [])
        keys = [sort_key for sort_key, _ in pairs]
        start, stop = _cursor_bounds(keys, position, search_request.count, descending, sorted_)
        page = SearchPage(len(resources), resources[start:stop])
        if page.resources and stop < len(resources):
            page.next = _position("next", keys[stop - 1])
        if page.resources and start > 0:
            page.previous = _position("previous", keys[start])
        return page

    def _candidate_rows(
        self, db: sqlite3.Connection, names: list[str], scim_filter: ScimFilter[Any] | None
    ) -> list[Row]:
        """Return the rows a filtered search walks: every row of the types, or only the one
        holding the value when the filter compares a unique attribute with ``eq``."""
        equality = _equality(scim_filter) if len(names) == 1 else None
        if equality is not None:
            binding, value = equality
            unique = self.unique_attributes(names[0])
            if binding.urn in unique.urns:
                encoded = unique.encode(binding, value)
                if encoded is None:
                    return []
                return cast(
                    list[Row],
                    db.execute(
                        "SELECT r.seq, r.resource_type, r.body FROM unique_values u "
                        "JOIN resources r ON r.id = u.resource_id "
                        "WHERE u.urn = ? AND u.value = ? AND r.resource_type = ?",
                        (binding.urn, encoded, names[0]),
                    ).fetchall(),
                )
        marks = ",".join("?" * len(names))
        return cast(
            list[Row],
            db.execute(
                "SELECT seq, resource_type, body FROM resources "
                f"WHERE resource_type IN ({marks}) ORDER BY seq",
                names,
            ).fetchall(),
        )

    def _resources(self, rows: Iterable[Row]) -> list[Resource[Any]]:
        return [self._load(resource_type, body) for _, resource_type, body in rows]

    # -- Writing --

    def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        name = cast(str, resource_type.name)
        created = resource.model_copy(deep=True)
        created.id = self.generate_id(resource_type, created)
        now = self.clock()
        created.meta = Meta(
            resource_type=name, created=now, last_modified=now, version=new_version()
        )
        body = created.model_dump(mode="json")
        unique = self.unique_attributes(name).values(body)
        with transaction(self._connection(), "IMMEDIATE") as db:
            db.execute(
                "INSERT INTO resources (id, resource_type, body) VALUES (?, ?, ?)",
                (created.id, name, json.dumps(body)),
            )
            self._claim(db, created.id, unique)
        return self.model(name).model_validate(body)

    def update(
        self,
        resource_type: ResourceType,
        resource: Resource[Any],
        *,
        expected_version: str | None = None,
    ) -> Resource[Any]:
        name = cast(str, resource_type.name)
        resource_id = cast(str, resource.id)
        with transaction(self._connection(), "IMMEDIATE") as db:
            stored = self._stored_meta(db, name, resource_id)
            self._check_version(stored, expected_version)
            updated = resource.model_copy(deep=True)
            updated.meta = stored.model_copy(
                update={"location": None, "last_modified": self.clock(), "version": new_version()}
            )
            body = updated.model_dump(mode="json")
            db.execute(
                "UPDATE resources SET body = ? WHERE id = ?", (json.dumps(body), resource_id)
            )
            db.execute("DELETE FROM unique_values WHERE resource_id = ?", (resource_id,))
            self._claim(db, resource_id, self.unique_attributes(name).values(body))
        return self.model(name).model_validate(body)

    def delete(
        self,
        resource_type: ResourceType,
        resource_id: str,
        *,
        expected_version: str | None = None,
    ) -> None:
        name = cast(str, resource_type.name)
        with transaction(self._connection(), "IMMEDIATE") as db:
            self._check_version(self._stored_meta(db, name, resource_id), expected_version)
            db.execute("DELETE FROM resources WHERE id = ?", (resource_id,))

    def _stored_meta(self, db: sqlite3.Connection, name: str, resource_id: str) -> Meta:
        row = db.execute(
            "SELECT json_extract(body, '$.meta') FROM resources WHERE id = ? AND resource_type = ?",
            (resource_id, name),
        ).fetchone()
        if row is None:
            raise NotFoundException(detail=f"{name} {resource_id!r} not found")
        return Meta.model_validate_json(row[0] or "{}")

    @staticmethod
    def _check_version(meta: Meta, expected_version: str | None) -> None:
        if expected_version is not None and meta.version != expected_version:
            raise PreconditionFailedException

    @staticmethod
    def _claim(db: sqlite3.Connection, resource_id: str, values: list[tuple[str, str]]) -> None:
        """Record the unique values of a resource, or raise UniquenessException (409)."""
        try:
            db.executemany(
                "INSERT INTO unique_values (urn, value, resource_id) VALUES (?, ?, ?)",
                [(urn, value, resource_id) for urn, value in values],
            )
        except sqlite3.IntegrityError:
            raise UniquenessException() from None


# -- Seeding -----------------------------------------------------------------


@functools.cache
def default_provider() -> ScimProvider:
    """scim2-server's default service (built once: it takes 0.1 s, and seeding calls it for
    every batch of a million users)."""
    return load_default_provider()


def seed(
    path: str | Path,
    resources: Iterable[dict[str, Any]],
    resource_type: str = "User",
    batch: int = 10000,
    *,
    provider: ScimProvider | None = None,
) -> int:
    """Write complete resources straight into the file, ``batch`` per transaction; return
    how many.

    Each resource is SCIM JSON with its ``id``, ``schemas``, ``meta`` and attributes, as
    :class:`SqliteStorage` stores it. What it lacks is filled as the storage would:
    ``id`` (a random hex), ``schemas`` (the core schema of the type), ``meta.resourceType``,
    ``meta.created``/``meta.lastModified`` (now), ``meta.version``; ``meta.location`` is
    dropped. The unique values (``userName``) are recorded, so the storage serves the rows
    exactly as if it had created them. The dicts are not validated (a million validations
    take minutes): pass valid resources. A taken ``id`` or unique value raises
    :class:`sqlite3.IntegrityError` and rolls its batch back (earlier batches stay).

    :param provider: The service whose schemas say which attributes are unique and how they
        compare; scim2-server's defaults (RFC 7643) when not given.
    """
    provider = provider or default_provider()
    model = provider.model_for(resource_type)
    if model is None:
        raise ValueError(f"unknown resource type {resource_type!r}")
    model = cast(type[Resource[Any]], model)
    unique = UniqueAttributes(model, provider.policy)
    core_schema = model.__schema__
    seeded = 0
    iterator = iter(resources)
    with closing(connect(path)) as db:
        while chunk := list(islice(iterator, batch)):
            now = json_datetime(utcnow())
            rows: list[tuple[str, str, str]] = []
            values: list[tuple[str, str, str]] = []
            for given in chunk:
                body = _completed(given, resource_type, core_schema, now)
                rows.append((body["id"], resource_type, json.dumps(body)))
                values.extend((urn, value, body["id"]) for urn, value in unique.values(body))
            with transaction(db, "IMMEDIATE"):
                db.executemany(
                    "INSERT INTO resources (id, resource_type, body) VALUES (?, ?, ?)", rows
                )
                db.executemany(
                    "INSERT INTO unique_values (urn, value, resource_id) VALUES (?, ?, ?)",
                    values,
                )
            seeded += len(rows)
    return seeded


def _completed(
    given: dict[str, Any], resource_type: str, core_schema: str | None, now: str
) -> dict[str, Any]:
    """Return a resource to seed, with what it lacks filled as the storage would."""
    body = dict(given)
    body["id"] = str(body.get("id") or uuid.uuid4().hex)
    if not body.get("schemas") and core_schema:
        body["schemas"] = [core_schema]
    meta = {key: value for key, value in (body.get("meta") or {}).items() if key != "location"}
    meta["resourceType"] = meta.get("resourceType") or resource_type
    meta["created"] = meta.get("created") or now
    meta["lastModified"] = meta.get("lastModified") or meta["created"]
    meta["version"] = meta.get("version") or new_version()
    body["meta"] = meta
    return body

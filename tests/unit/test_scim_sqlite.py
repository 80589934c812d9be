"""The SQLite storage of the test scim2-server: scim2-server's storage contract, seeding, HTTP."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import requests
from scim2_models import ResourceType, ScimProvider, SearchRequest, UniquenessException
from scim2_server.testing import ScimStorageContract
from scim2_server.utils import load_default_provider, parametrize

from tests.support.scim_sqlite import SqliteStorage, seed
from tests.support.servers import ScimServer

PROVIDER = load_default_provider()  # loading it takes 0.1 s: once, not for every test
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
SCIM_JSON = {"Content-Type": "application/scim+json"}


class TestSqliteStorageContract(ScimStorageContract):
    """scim2-server's own checks of a storage (sorting and cursors included: the default
    configuration announces sorting, and the storage supports cursors)."""

    @pytest.fixture
    def provider(self) -> ScimProvider:
        return PROVIDER

    @pytest.fixture
    def storage(self, tmp_path: Path, provider: ScimProvider) -> Iterator[SqliteStorage]:
        storage = SqliteStorage(tmp_path / "scim.db", provider)
        yield storage
        storage.close()


def seeded_user(number: int) -> dict[str, Any]:
    return {
        "schemas": [USER_SCHEMA],
        "id": f"id-{number:04d}",
        "externalId": f"ext-{number}",
        "userName": f"user{number:04d}",
        "name": {"givenName": "Given", "familyName": f"Family{number}"},
        "emails": [{"value": f"user{number}@example.org", "type": "work", "primary": True}],
        "active": number % 3 != 0,
        "meta": {
            "resourceType": "User",
            "created": "2024-05-01T10:00:00Z",
            "lastModified": "2024-05-01T10:00:00Z",
        },
    }


@pytest.fixture
def user_type() -> ResourceType:
    return next(rt for rt in PROVIDER.resource_types if rt.id == "User")


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[SqliteStorage, list[dict[str, Any]]]]:
    """A storage over a file seeded with 25 users, in batches of 10."""
    users = [seeded_user(number) for number in range(25)]
    path = tmp_path / "seeded.db"
    assert seed(path, users, batch=10) == 25
    storage = SqliteStorage(path, PROVIDER)
    yield storage, users
    storage.close()


def search_request(**parameters: Any) -> SearchRequest[Any]:
    return parametrize(SearchRequest, PROVIDER.model_for("User"))(**parameters)


def test_seeded_users_are_listed_in_seed_order_by_cursor_and_by_index(
    seeded: tuple[SqliteStorage, list[dict[str, Any]]], user_type: ResourceType
) -> None:
    storage, users = seeded
    expected = [user["id"] for user in users]

    by_cursor: list[str] = []
    page = storage.search([user_type], search_request(cursor="", count=10))
    pages = [page]
    while page.next is not None:
        page = storage.search([user_type], search_request(cursor="", count=10), position=page.next)
        pages.append(page)
    by_cursor = [resource.id for page in pages for resource in page.resources]
    assert [len(page.resources) for page in pages] == [10, 10, 5]
    assert {page.total for page in pages} == {25}

    by_index = [
        resource.id
        for start in (1, 11, 21)
        for resource in storage.search(
            [user_type], search_request(start_index=start, count=10)
        ).resources
    ]

    assert by_cursor == expected
    assert by_index == expected


def test_seeded_users_are_read_back_as_seeded(
    seeded: tuple[SqliteStorage, list[dict[str, Any]]], user_type: ResourceType
) -> None:
    storage, users = seeded
    for user in users:
        stored = storage.get(user_type, user["id"]).model_dump(mode="json")
        version = stored["meta"].pop("version")
        assert version.startswith('W/"')
        assert stored == user


def test_seeded_user_names_are_unique_and_found_by_filter(
    seeded: tuple[SqliteStorage, list[dict[str, Any]]], user_type: ResourceType
) -> None:
    """Seeding records the unique values as the storage does: a seeded userName, in any
    case, is taken, and an ``eq`` filter on it finds the user."""
    storage, _ = seeded
    model = PROVIDER.model_for("User")
    assert model is not None

    with pytest.raises(UniquenessException):
        storage.create(user_type, model(user_name="USER0003"))
    page = storage.search([user_type], search_request(filter='userName eq "User0003"'))
    assert page.total == 1
    assert [resource.id for resource in page.resources] == ["id-0003"]


def test_seeding_a_taken_user_name_fails(tmp_path: Path) -> None:
    path = tmp_path / "seeded.db"
    seed(path, [seeded_user(1)])
    duplicate = {**seeded_user(2), "userName": "USER0001"}

    with pytest.raises(sqlite3.IntegrityError):
        seed(path, [duplicate])


@pytest.mark.integration
def test_http_round_trip_on_the_sqlite_storage(tmp_path: Path) -> None:
    """A gunicorn scim2-server over a seeded SQLite file: POST a user, list every user by
    cursor, GET the new one (stored in the file), then wipe the file through /_test/wipe."""
    storage_file = tmp_path / "scim.db"
    seed(storage_file, [seeded_user(number) for number in range(3)])
    with ScimServer(tmp_path / "scim", storage_file=storage_file, cursor_pagination=True) as scim:
        scim.start()
        base = scim.base_url
        created = requests.post(
            f"{base}/Users",
            json={"schemas": [USER_SCHEMA], "userName": "bjensen", "displayName": "Babs"},
            headers=SCIM_JSON,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        user = created.json()

        listed: list[dict[str, Any]] = []
        params = {"cursor": "", "count": "2"}
        while True:
            page = requests.get(f"{base}/Users", params=params, timeout=10)
            assert page.status_code == 200, page.text
            body = page.json()
            listed.extend(body.get("Resources", []))
            if not body.get("nextCursor"):
                break
            params = {"cursor": body["nextCursor"], "count": "2"}

        fetched = requests.get(f"{base}/Users/{user['id']}", timeout=10)

        assert [u["userName"] for u in listed] == ["user0000", "user0001", "user0002", "bjensen"]
        assert fetched.status_code == 200
        assert fetched.json()["displayName"] == "Babs"
        assert fetched.headers["ETag"] == user["meta"]["version"]
        with closing(sqlite3.connect(storage_file)) as db:
            row = db.execute("SELECT body FROM resources WHERE id = ?", (user["id"],)).fetchone()
        assert json.loads(row[0])["userName"] == "bjensen"

        scim.wipe()
        assert requests.get(f"{base}/Users", timeout=10).json()["totalResults"] == 0


def test_a_file_written_without_counts_is_counted(tmp_path: Path, user_type: ResourceType) -> None:
    """``totalResults`` comes from ``resource_counts``: a file whose ``resources`` were written
    without it (the fixed layout only) gets it filled on opening, then kept by the triggers."""
    path = tmp_path / "bare.db"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE resources (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL"
            " UNIQUE, resource_type TEXT NOT NULL, body TEXT NOT NULL)"
        )
        db.executemany(
            "INSERT INTO resources (id, resource_type, body) VALUES (?, 'User', ?)",
            [(user["id"], json.dumps(user)) for user in map(seeded_user, range(3))],
        )
    storage = SqliteStorage(path, PROVIDER)
    try:
        assert storage.search([user_type], search_request(count=0)).total == 3
        storage.delete(user_type, "id-0001")
        assert storage.search([user_type], search_request(count=0)).total == 2
        storage.wipe()
        assert storage.search([user_type], search_request(count=0)).total == 0
    finally:
        storage.close()


def test_threads_share_the_storage(tmp_path: Path, user_type: ResourceType) -> None:
    """Each thread uses its own connection: concurrent creations and searches all succeed."""
    storage = SqliteStorage(tmp_path / "threads.db", PROVIDER)
    model = PROVIDER.model_for("User")
    assert model is not None

    def work(thread: int) -> int:
        for number in range(20):
            with storage.operation():
                storage.create(user_type, model(user_name=f"t{thread}-{number}"))
            storage.search([user_type], search_request(cursor="", count=5))
        return thread

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert sorted(pool.map(work, range(8))) == list(range(8))
        page = storage.search([user_type], search_request(count=0))
        assert page.total == 160
    finally:
        storage.close()

"""Shared fixtures: real servers started once per test session, reset per test.

- ``slapd``: a real OpenLDAP slapd (Debian package), own cn=config, LDAP+StartTLS and LDAPS
  with a test CA; ``directory`` reloads the sample people before each test (slapadd -q).
- ``scim_servers``: real scim2-server instances under gunicorn (open, bearer, basic, no-PATCH);
  each test gets an emptied one.
- ``prefect``: one Prefect test harness (a real temporary Prefect server) for the session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.fault_proxy import FaultProxy
from tests.support.servers import ScimServer, Slapd, ou_ldif, person_ldif

SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
CUSTOM_URN = "urn:example:params:scim:schemas:extension:acme:2.0:User"
BEARER_TOKEN = "test-bearer-token-7f3a"
BASIC = ("provisioner", "basic-pass-91c2")
LDAP_PASSWORD = "admin-secret"


def sample_people() -> str:
    """The sample directory: four active people, one locked, one contractor (out of scope)."""
    extra_ada = {
        "title": ["Countess"],
        "telephoneNumber": ["+44 20 1111"],
        "mobile": ["+44 77 2222"],
        "employeeNumber": ["1815"],
        "departmentNumber": ["Analytical Engines"],
        "employeeType": ["staff"],
        "description": ["CC-1001"],
    }
    entries = [
        ou_ldif(PEOPLE),
        person_ldif(
            "ada",
            given_name="Ada",
            surname="Lovelace",
            mail=["ada@example.org", "countess@example.org"],
            ou_dn=PEOPLE,
            extra=extra_ada,
        ),
        person_ldif(
            "bob",
            given_name="Bob",
            surname="Babbage",
            mail=["bob@example.org"],
            ou_dn=PEOPLE,
            extra={
                "title": ["Engineer"],
                "employeeType": ["staff"],
                "manager": [f"uid=ada,{PEOPLE}"],
            },
        ),
        person_ldif("cy", given_name="Cy", surname="Locked", ou_dn=PEOPLE, locked=True),
        person_ldif("dee", given_name="Dee", surname="Dee", mail=["dee@example.org"], ou_dn=PEOPLE),
        person_ldif(
            "eve",
            given_name="Eve",
            surname="Contract",
            ou_dn=PEOPLE,
            extra={"employeeType": ["contractor"]},
        ),
    ]
    return "\n".join(entries) + "\n" + sample_groups()


def group_ldif(cn: str, members: list[str], *, unique: bool = False) -> str:
    """A groupOfNames (or groupOfUniqueNames) entry under ou=groups with these member DNs."""
    object_class, attribute = (
        ("groupOfUniqueNames", "uniqueMember")
        if unique
        else (
            "groupOfNames",
            "member",
        )
    )
    lines = [f"dn: cn={cn},{GROUPS}", f"objectClass: {object_class}", f"cn: {cn}"]
    lines += [f"{attribute}: {member}" for member in members]
    return "\n".join(lines) + "\n\n"


def person(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


def sample_groups() -> str:
    """engineers (ada, bob); everyone (everybody, incl. the locked and the contractor);
    auditors (groupOfUniqueNames: dee); staff (the engineers group, nested, and dee)."""
    return (
        ou_ldif(GROUPS)
        + group_ldif("engineers", [person("ada"), person("bob")])
        + group_ldif("everyone", [person(u) for u in ("ada", "bob", "cy", "dee", "eve")])
        + group_ldif("auditors", [person("dee")], unique=True)
        + group_ldif("staff", [f"cn=engineers,{GROUPS}", person("dee")])
    )


@pytest.fixture(scope="session")
def prefect() -> Iterator[None]:
    """A real temporary Prefect server for the whole session."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd"), suffix=SUFFIX, admin_password=LDAP_PASSWORD)
    server.start(sample_people())
    yield server
    server.stop()


@pytest.fixture
def directory(slapd: Slapd) -> Slapd:
    """The session's slapd with the sample people freshly loaded."""
    slapd.reload(sample_people())
    return slapd


class ScimServers:
    """Lazily started scim2-server variants, stopped at the end of the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: dict[str, ScimServer] = {}

    def get(self, variant: str) -> ScimServer:
        if variant not in self.servers:
            options: dict[str, Any] = {
                "user_extensions": [{"urn": CUSTOM_URN, "attributes": ["costCenter"]}]
            }
            if variant == "bearer":
                options["bearer_token"] = BEARER_TOKEN
            elif variant == "basic":
                options["basic"] = BASIC
            elif variant == "nopatch":
                options["patch_supported"] = False
            elif variant == "cursor":
                options["cursor_pagination"] = True
            elif variant == "nofilter":
                options["filter_supported"] = False
            server = ScimServer(self.root / variant, **options)
            server.start()
            self.servers[variant] = server
        server = self.servers[variant]
        server.wipe()
        return server

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="session")
def scim_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScimServers]:
    servers = ScimServers(tmp_path_factory.mktemp("scim"))
    yield servers
    servers.stop()


@pytest.fixture
def scim(scim_servers: ScimServers) -> ScimServer:
    """An emptied scim2-server without authentication, PATCH supported."""
    return scim_servers.get("open")


@pytest.fixture
def proxy(scim: ScimServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the emptied open scim2-server, injecting nothing until a
    test sets its ``rates`` (or holds its answers)."""
    server = FaultProxy(scim.base_url.removesuffix("/v2"), rates={})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ldap_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LDAP_PASSWORD", LDAP_PASSWORD)


def write_config(
    path: Path,
    slapd: Slapd,
    scim: ScimServer,
    *,
    source: dict[str, Any] | None = None,
    state_url: str | None = None,
    **target: Any,
) -> Path:
    """A config file for the sample directory and one target named ``app``."""
    mapping = {
        "userName": "uid",
        "externalId": "$id",
        "displayName": "cn",
        "name": {"givenName": "givenName", "familyName": "sn", "formatted": "{givenName} {sn}"},
        "title": "title",
        "emails": [{"value": "mail", "type": "work", "primary": True}],
        "phoneNumbers": [
            {"value": "telephoneNumber", "type": "work"},
            {"value": "mobile", "type": "mobile"},
        ],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
            "employeeNumber": "employeeNumber",
            "department": "departmentNumber",
            "manager": {"value": "@manager"},
        },
        CUSTOM_URN: {"costCenter": "description"},
    }
    mapping = target.pop("mapping", mapping)
    config = {
        "source": {
            "url": slapd.ldaps_url,
            "ca_file": str(slapd.tls.ca_cert),
            "bind_dn": slapd.admin_dn,
            "bind_password": {"env": "TEST_LDAP_PASSWORD"},
            "users": {
                "base_dn": PEOPLE,
                "filter": "(&(objectClass=inetOrgPerson)(!(employeeType=contractor)))",
            },
            "account_status": {"method": "flag", "attribute": "nsAccountLock"},
            **(source or {}),
        },
        "state": {"url": state_url or f"sqlite:///{path.parent / 'state.db'}"},
        "targets": [
            {"name": "app", "url": scim.base_url, "max_retries": 2, "mapping": mapping, **target}
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def target_users(scim: ScimServer, **auth: Any) -> dict[str, dict[str, Any]]:
    """Every user on the target, by userName."""
    response = requests.get(f"{scim.base_url}/Users", params={"count": "1000"}, timeout=10, **auth)
    response.raise_for_status()
    return {u["userName"]: u for u in response.json().get("Resources", [])}


def add_people(slapd: Slapd, count: int) -> None:
    """Add people p000, p001, ... to the running directory (online, with ldapmodify)."""
    entries = (
        person_ldif(f"p{n:03d}", given_name="P", surname=str(n), ou_dn=PEOPLE).replace(
            "\n", "\nchangetype: add\n", 1
        )
        for n in range(count)
    )
    slapd.modify("".join(entries))


def create_on_target(scim: ScimServer, user_name: str) -> dict[str, Any]:
    """Create a bare user directly on the target, as if someone else had made it."""
    response = requests.post(
        f"{scim.base_url}/Users",
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": user_name},
        timeout=10,
    )
    response.raise_for_status()
    return dict(response.json())


def sync(
    config: Path, capsys: pytest.CaptureFixture[str], *args: str, command: str = "sync"
) -> tuple[int, Any]:
    """Run ``scim-provisioner <command> --json`` and return (exit code, summary or stderr)."""
    from flows.cli import main

    capsys.readouterr()
    code = main([command, "--config", str(config), "--json", *args])
    out, err = capsys.readouterr()
    if code == 2:
        return code, err
    return code, json.loads(out)


FAULT_REPORT = pytest.StashKey[list[dict[str, str]]]()


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> dict[str, str]:
    """A row of the "faults injected" table printed at the end of the session (in CI's output
    too, whatever pytest captures): fill in ``faults``, ``injected`` and ``outcome``."""
    name = request.node.name.removeprefix("test_")
    row = {"test": name, "faults": "", "injected": "", "outcome": "did not finish"}
    request.config.stash.setdefault(FAULT_REPORT, []).append(row)
    return row


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(FAULT_REPORT, [])
    if not rows:
        return
    terminalreporter.write_sep("-", "faults injected")
    for row in rows:
        terminalreporter.write_line(
            f"{row['test']}: faults {row['faults']} | injected {row['injected']} "
            f"| outcome {row['outcome']}"
        )

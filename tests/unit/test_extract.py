"""Directory entries become source users: ids, account status, text values."""

import uuid
from collections.abc import Iterator

import ldap3
import pytest
from ldap3.core import exceptions as ldap_exc

from tasks.config import TlsMode, parse_config
from tasks.errors import SourceUnavailable
from tasks.ldap.extract import connect, entry_to_user, mapped_attributes, paged_entries


def source(directory_type: str = "openldap", **status: object):
    data = {
        "source": {"type": directory_type, "url": "ldap://x", "users": {"base_dn": "dc=x"}},
        "targets": [{"name": "t", "url": "http://t/v2"}],
    }
    if status:
        data["source"]["account_status"] = status
    return parse_config(data)


class TestIds:
    def test_entry_uuid_is_the_openldap_id(self) -> None:
        user = entry_to_user(
            source().source, "uid=a,dc=x", {"entryUUID": [b"1b4e28ba-2fa1-11d2-883f-0016d3cca427"]}
        )
        assert user.source_id == "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

    def test_object_guid_is_decoded_little_endian(self) -> None:
        """AD's binary objectGUID becomes the UUID string AD tools show."""
        guid = uuid.UUID("7d3b6a0e-5d1c-4f0a-9b8e-1c2d3e4f5a6b")
        user = entry_to_user(
            source("active_directory").source,
            "CN=a,DC=x",
            {"objectGUID": [guid.bytes_le], "userAccountControl": [b"512"]},
        )
        assert user.source_id == str(guid)

    def test_entry_without_id_is_set_aside(self) -> None:
        assert entry_to_user(source().source, "uid=a,dc=x", {"uid": [b"a"]}) == (
            "uid=a,dc=x",
            "no entryUUID (the stable source id)",
        )


class TestAccountStatus:
    def test_user_account_control_disable_bit(self) -> None:
        ad = source("active_directory").source
        guid = [uuid.uuid4().bytes_le]
        assert entry_to_user(
            ad, "CN=a", {"objectGUID": guid, "userAccountControl": [b"514"]}
        ).disabled
        assert not entry_to_user(
            ad, "CN=a", {"objectGUID": guid, "userAccountControl": [b"512"]}
        ).disabled

    def test_flag_attribute_case_insensitive(self) -> None:
        flag = source(method="flag", attribute="nsAccountLock", disabled_values=["true"]).source
        entry = {"entryUUID": [b"id"], "nsaccountlock": [b"TRUE"]}
        assert entry_to_user(flag, "uid=a", entry).disabled
        entry["nsaccountlock"] = [b"FALSE"]
        assert not entry_to_user(flag, "uid=a", entry).disabled

    def test_bad_user_account_control_is_set_aside(self) -> None:
        ad = source("active_directory").source
        result = entry_to_user(
            ad, "CN=a", {"objectGUID": [uuid.uuid4().bytes_le], "userAccountControl": [b"x"]}
        )
        assert isinstance(result, tuple) and "unreadable" in result[1]


def test_values_that_are_not_utf8_are_set_aside_with_a_warning() -> None:
    """A binary value is left out of the text values, named with its size (a mapping that
    reads it rejects the entry: tests/unit/test_transform.py)."""
    user = entry_to_user(
        source().source,
        "uid=a",
        {"entryUUID": [b"id"], "cn": [b"ok", b"\xff\xfe"], "jpegPhoto": [b"\xff\xd8" * 600]},
    )
    assert user.attributes["cn"] == ["ok"]
    assert user.attributes["jpegphoto"] == []
    assert user.binary == (("cn", 2), ("jpegphoto", 1200))
    assert user.warnings == (
        "attribute cn: a value of 2 bytes is not UTF-8 text (binary data) and was left out",
        "attribute jpegphoto: a value of 1,200 bytes is not UTF-8 text (binary data) "
        "and was left out",
    )


def test_mapped_attributes_reads_only_what_the_mappings_use() -> None:
    config = source()
    names = mapped_attributes([config.targets[0].mapping])
    assert {"uid", "cn", "givenName", "sn", "mail", "telephoneNumber", "mobile"} <= names
    assert "$id" not in names


def test_dn_comparison_ignores_how_special_characters_are_escaped() -> None:
    from tasks.ldap.dn import normalize_dn

    hex_escaped = r"UID=O\2BBrien\2CJR\22ZO\C3\AB, ou=People,dc=example,dc=org"
    char_escaped = r"uid=o\+brien\,jr\"zoë,ou=people,dc=example,dc=org"
    assert normalize_dn(hex_escaped) == normalize_dn(char_escaped)
    assert normalize_dn(r"cn=a+uid=b,dc=x") != normalize_dn(r"cn=a\+uid=b,dc=x")
    assert normalize_dn(r"cn=a\,b,dc=x") != normalize_dn(r"cn=a,b=,dc=x")


class DroppingConnection:
    """Stands in for an ldap3 connection whose paged search yields a page, then fails."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.extend = self
        self.standard = self

    def paged_search(self, *args: object, **kwargs: object) -> Iterator[dict[str, object]]:
        yield {"type": "searchResEntry", "dn": "uid=a,dc=x", "raw_attributes": {}}
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        ldap_exc.LDAPSessionTerminatedByServerError("session terminated by server"),
        # a TLS record broken in transit: the TLS layer's words, but not a TLS config problem
        ldap_exc.LDAPSocketReceiveError(
            "error receiving data: [SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption "
            "failed or bad record mac (_ssl.c:2580)"
        ),
        ldap_exc.LDAPSocketSendError("socket sending error[Errno 32] Broken pipe"),
        ldap_exc.LDAPResponseTimeoutError("no response from server"),
    ],
)
def test_a_connection_lost_in_the_middle_of_a_search_is_retryable(error: Exception) -> None:
    """After the connection was opened, verified and bound, losing it is the directory going
    away (retried), never a TLS or search failure (the run would stop)."""
    entries = paged_entries(
        DroppingConnection(error), source().source, "dc=x", "(uid=*)", "subtree", ["uid"]
    )
    assert next(entries)[0] == "uid=a,dc=x"
    with pytest.raises(SourceUnavailable, match="went away during the search of 'dc=x'"):
        next(entries)


def test_a_fractional_receive_timeout_reaches_ldap3_in_whole_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ldap3 packs receive_timeout into SO_RCVTIMEO as an integer on Linux: a float (as
    pydantic makes of ``receive_timeout: 30``) would fail every connection (until bound,
    the value given is connect_timeout)."""
    seen: dict[str, object] = {}

    class Connection:
        def __init__(self, server: object, **kwargs: object) -> None:
            seen.update(kwargs)
            raise ldap_exc.LDAPSocketOpenError("stop here")

    monkeypatch.setattr(ldap3, "Connection", Connection)
    config = source().source.model_copy(update={"connect_timeout": 2.5, "tls": TlsMode.none})
    with pytest.raises(ldap_exc.LDAPSocketOpenError):
        connect(config)
    assert seen["receive_timeout"] == 3 and isinstance(seen["receive_timeout"], int)


def test_plain_dns_take_the_fast_path_to_the_same_form() -> None:
    from tasks.ldap.dn import _parsed_dn, normalize_dn

    for dn in [
        "uid=user0000001,ou=people,dc=example,dc=org",
        " UID = Ada ,OU=People, DC=Example,dc=ORG ",
        "cn=Zoë Müller,ou=Personnes,dc=exemple,dc=fr",
        "CN=John Smith,OU=Sales Team,DC=corp,DC=local",
        "cn=a=b,dc=x",
        "cn=,dc=x",
        "",
    ]:
        assert normalize_dn(dn) == _parsed_dn(dn), dn


def test_a_wrong_ca_file_is_named_in_one_line(tmp_path) -> None:
    """Not "failed unexpectedly: LDAPSSLConfigurationError('invalid CA public key file')":
    a source error naming source.ca_file and its path."""
    from tasks.config import parse_config
    from tasks.errors import SourceError
    from tasks.ldap.extract import connect

    missing = tmp_path / "no-such-ca.pem"
    config = parse_config(
        {
            "source": {
                "url": "ldaps://127.0.0.1:1",
                "ca_file": str(missing),
                "users": {"base_dn": "ou=people,dc=x"},
            },
            "targets": [{"name": "app", "url": "https://app.example.org/scim/v2"}],
        }
    )
    with pytest.raises(SourceError, match=f"source.ca_file {missing}: not a readable CA"):
        connect(config.source)


def test_a_wrong_target_ca_file_makes_the_target_unreached(tmp_path) -> None:
    from tasks.config import TargetConfig
    from tasks.errors import TargetUnreachable
    from tasks.scim.target import reached

    target = TargetConfig(name="app", url="https://app.example.org/v2", ca_file=tmp_path / "x")
    with (
        pytest.raises(TargetUnreachable, match=r"target app .*ca_file .*/x: cannot be read"),
        reached(target),
    ):
        pass


def test_a_directory_that_accepts_but_never_answers_fails_within_connect_timeout() -> None:
    """A server that accepts the connection and says nothing held the run receive_timeout
    (120 s) per try, 525 s in all: until bound it gets connect_timeout, then one line."""
    import socket
    import time

    from tasks.config import parse_config
    from tasks.errors import SourceUnavailable
    from tasks.ldap.extract import connect

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepted by the kernel, never answered
    port = listener.getsockname()[1]
    config = parse_config(
        {
            "source": {
                "url": f"ldap://127.0.0.1:{port}",
                "tls": "none",
                "connect_timeout": 1,
                "users": {"base_dn": "ou=people,dc=x"},
            },
            "targets": [{"name": "app", "url": "https://app.example.org/scim/v2"}],
        }
    )
    started = time.monotonic()
    try:
        with pytest.raises(SourceUnavailable, match=rf"LDAP server ldap://127.0.0.1:{port}"):
            connect(config.source)
    finally:
        listener.close()
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n"
        b"Content-Length: 13\r\n\r\n<html></html>",
        b"\x15\x03\x01\x00\x02\x02\x46",  # a TLS alert: ldap:// pointed at an LDAPS port
    ],
    ids=["http", "tls-alert"],
)
def test_a_service_that_is_not_ldap_is_named_in_one_line(answer: bytes) -> None:
    """Was "sync failed unexpectedly: KeyError((1, 20))" (an HTTP server on the port) or an
    IndexError (an LDAPS port asked in plain LDAP)."""
    import socket
    import threading

    from tasks.config import parse_config
    from tasks.errors import SourceError
    from tasks.ldap.extract import connect

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.sendall(answer)
        conn.recv(4096)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    config = parse_config(
        {
            "source": {
                "url": f"ldap://127.0.0.1:{port}",
                "tls": "none",
                "connect_timeout": 2,
                "users": {"base_dn": "ou=people,dc=x"},
            },
            "targets": [{"name": "app", "url": "https://app.example.org/scim/v2"}],
        }
    )
    try:
        with pytest.raises(SourceError, match=rf"127.0.0.1:{port} did not answer as an LDAP"):
            connect(config.source)
    finally:
        listener.close()

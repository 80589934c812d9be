"""Extract: read the users in scope from the directory (OpenLDAP, Active Directory, any LDAPv3).

The connection is made in one place (:func:`connect`), with TLS verification on unless the
config turns it off. The search is paged; values come back as text, the stable id as a string
(``entryUUID`` as given, AD's binary ``objectGUID`` as its canonical UUID form).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.asn1 import LDAP_MESSAGE_CONTEXT, decode_sequence
from ldap3.utils.conv import to_unicode

from tasks import expressions
from tasks.config import LdapSource, MultiValuedRule, TlsMode
from tasks.errors import SourceError, SourceUnavailable, retry_on
from tasks.ldap import ber
from tasks.ldap.ad import UserAccountControl, guid_text
from tasks.logs import run_logger

if TYPE_CHECKING:
    from prefect import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceUser:
    """One directory entry in scope: its stable id, DN, status and attribute values as text.

    Attribute names are lower-cased, as LDAP compares them case-insensitively.
    """

    source_id: str
    dn: str
    attributes: dict[str, list[str]]
    disabled: bool = False
    warnings: tuple[str, ...] = field(default=())
    binary: tuple[tuple[str, int], ...] = field(default=())
    """(attribute, size in bytes) of each value that is not UTF-8 text (binary data such as a
    jpegPhoto): left out of ``attributes``; a mapping reading it rejects the entry."""


@dataclass(frozen=True, slots=True)
class Extraction:
    """Everything one search returned: the usable entries and those without a stable id."""

    users: list[SourceUser]
    invalid: list[tuple[str, str]]
    """(dn, reason) of entries that cannot be tracked."""


def mapped_attributes(mappings: Iterable[dict[str, Any]]) -> set[str]:
    """The LDAP attributes that the mappings read."""
    names: set[str] = set()

    def expression(expr: str) -> None:
        names.update(expressions.attributes(expr))

    def walk(node: Any) -> None:
        if isinstance(node, str):
            expression(node)
        elif isinstance(node, MultiValuedRule):
            expression(node.value)
            if node.display:
                expression(node.display)
        elif isinstance(node, dict):
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for mapping in mappings:
        walk(mapping)
    return names


def connect(source: LdapSource) -> ldap3.Connection:
    """Open and bind a connection as the config says; StartTLS happens before the bind. When
    the server is unreachable, the ``failover_urls`` are tried in order."""
    urls = [source.url, *source.failover_urls]
    unreachable: list[SourceUnavailable] = []
    for url in urls:
        try:
            conn = _connect(source, url)
        except SourceUnavailable as exc:
            unreachable.append(exc)
            continue
        if unreachable:
            log.warning(
                "LDAP server %s unreachable; using %s (%s)", source.url, url, unreachable[0]
            )
        return conn
    if len(unreachable) == 1:
        raise unreachable[0]
    raise SourceUnavailable(
        f"no LDAP server reachable ({len(urls)} tried): "
        + "; ".join(str(exc) for exc in unreachable)
    ) from unreachable[-1]


def _connect(source: LdapSource, url: str) -> ldap3.Connection:
    parts = urlsplit(url)
    ldaps = source.tls is TlsMode.ldaps
    port = parts.port or (636 if ldaps else 389)
    tls = None
    if source.tls is not TlsMode.none:
        if not source.verify_tls:
            log.warning("TLS certificate verification is OFF for %s (verify_tls: false)", url)
        try:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED if source.verify_tls else ssl.CERT_NONE,
                ca_certs_file=str(source.ca_file) if source.ca_file else None,
            )
        except ldap_exc.LDAPSSLConfigurationError as exc:
            raise SourceError(
                f"source.ca_file {source.ca_file}: not a readable CA certificate file ({exc})"
            ) from exc
    else:
        log.warning("LDAP traffic to %s is not encrypted (tls: none)", url)
    server = ldap3.Server(
        parts.hostname,
        port=port,
        use_ssl=ldaps,
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=source.connect_timeout,
    )
    password = source.bind_password.resolve().get_secret_value() if source.bind_password else None
    conn = ldap3.Connection(
        server,
        user=source.bind_dn,
        password=password,
        auto_bind=ldap3.AUTO_BIND_NONE,
        # Until bound, a server has connect_timeout to answer (one that accepts connections
        # but never answers took receive_timeout x 4 tries: 525 s). Whole seconds: on Linux
        # ldap3 packs the value into SO_RCVTIMEO as an integer.
        receive_timeout=math.ceil(source.connect_timeout),
        raise_exceptions=True,
        read_only=True,
        auto_referrals=False,
        auto_range=False,
        return_empty_attributes=False,
    )
    _decode_entries_raw(conn)
    try:
        conn.open()
        if source.tls is TlsMode.starttls:
            conn.start_tls()
        conn.bind()
    except ldap_exc.LDAPException as exc:
        _close_quietly(conn)
        raise _connection_error(source, url, exc) from exc
    except (KeyError, IndexError, ValueError, TypeError) as exc:  # ldap3 decoding non-LDAP bytes
        _close_quietly(conn)
        raise SourceError(
            f"{url} did not answer as an LDAP server ({type(exc).__name__} decoding its "
            "answer): is it the directory's port, with ldaps:// for an LDAPS port?"
        ) from exc
    _receive_timeout(conn, math.ceil(source.receive_timeout))  # searches may take longer
    return conn


def _receive_timeout(conn: ldap3.Connection, seconds: int) -> None:
    """Set an open connection's receive timeout, as ldap3 does when it opens the socket."""
    conn.receive_timeout = seconds
    sock = conn.socket
    sock.settimeout(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("LL", seconds, 0))


def _text(value: bytes) -> str:
    """A DN or attribute name: UTF-8 as LDAP says, else as ldap3 would guess."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return str(to_unicode(value, from_server=True))


def _decode_entries_raw(conn: ldap3.Connection) -> None:
    """Make this connection decode search entries to their raw values only.

    ldap3 decodes each message with its generic BER decoder and then builds, for every entry,
    a case-insensitive dict of the raw values *and* a converted copy of every attribute; the
    provisioner reads only the raw values (its own decoding says what is text and what is
    binary). Here an entry of the search being answered is decoded straight from its bytes
    (:mod:`tasks.ldap.ber`) as it is received, and one ldap3 decodes (a shape that decoder
    leaves to it) gets the raw values only. Other messages, and the controls of entries (e.g.
    syncrepl's state), are decoded by ldap3 as before. Reading the directory costs a fraction
    of what it did (see docs/performance.md).
    """
    strategy = conn.strategy
    generic = strategy.decode_response_fast
    decode_control = strategy.decode_control_fast

    def controls(message: bytes, where: tuple[int, int] | None) -> dict[str, Any] | None:
        if where is None:
            return None
        found = decode_sequence(message, where[0], where[1], LDAP_MESSAGE_CONTEXT)[0][3]
        return dict(decode_control(c[3]) for c in found)

    def response(dn: bytes, raw: dict[str, list[bytes]], found: Any) -> dict[str, Any]:
        result: dict[str, Any] = {
            "type": "searchResEntry",
            "raw_dn": dn,
            "dn": _text(dn),
            "raw_attributes": raw,
            "attributes": raw,
        }
        if found:
            result["controls"] = found
        return result

    def decode(message: dict[str, Any]) -> dict[str, Any]:
        if message["protocolOp"] != 4:  # not a searchResEntry
            return cast(dict[str, Any], generic(message))
        payload = message["payload"]
        raw = {_text(a[3][0][3]): [bytes(v[3]) for v in a[3][1][3]] for a in payload[1][3]}
        found = message["controls"] and dict(decode_control(c[3]) for c in message["controls"])
        return response(payload[0][3], raw, found)

    strategy.decode_response_fast = decode

    receiving = strategy.receiving
    get_response = strategy._get_response
    entries: list[dict[str, Any]] = []
    awaited: list[int] = []  # the messageID whose answer is being received

    def receive() -> list[bytes]:
        """ldap3's receiving, with the awaited search's entries decoded and set aside."""
        while True:
            messages = receiving()
            if not messages or not awaited:
                return cast(list[bytes], messages)
            others = []
            for message in messages:
                entry = ber.search_entry(message)
                if entry is None or entry[0] != awaited[0]:
                    others.append(message)  # ldap3 decodes it, or says what is wrong with it
                    continue
                _, dn, raw, where = entry
                attributes = {_text(name): values for name, values in raw.items()}
                entries.append(response(dn, attributes, controls(message, where)))
            if others:
                return others

    def answer(message_id: int, timeout: Any) -> Any:
        """ldap3's _get_response, with the entries set aside by receive() put first."""
        entries.clear()
        awaited[:] = [message_id]
        try:
            responses = get_response(message_id, timeout)
        finally:
            awaited.clear()
            found = entries[:]
            entries.clear()
        return found + responses if isinstance(responses, list) else responses

    strategy.receiving = receive
    strategy._get_response = answer


def _close_quietly(conn: ldap3.Connection) -> None:
    """Close a connection that failed to open or bind (ldap3 keeps its unconnected socket)."""
    with contextlib.suppress(ldap_exc.LDAPException):
        conn.unbind()
    if conn.socket is not None:
        with contextlib.suppress(OSError):
            conn.socket.close()


def _connection_error(source: LdapSource, url: str, exc: ldap_exc.LDAPException) -> SourceError:
    """The source error for a failed open, StartTLS or bind of the server at ``url``."""
    if isinstance(exc, ldap_exc.LDAPInvalidCredentialsResult):
        return SourceError(f"LDAP bind to {url} as {source.bind_dn!r} refused: invalid credentials")
    if isinstance(exc, ldap_exc.LDAPCommunicationError | ldap_exc.LDAPStartTLSError):
        return _communication_error(url, exc)
    return SourceError(f"LDAP connection to {url} failed: {exc}")


def _communication_error(url: str, exc: Exception) -> SourceError:
    text = str(exc)
    if "timed out" in text.lower():  # a server that never answers (a TLS handshake included)
        return SourceUnavailable(f"LDAP server {url} unreachable: {text}")
    if "certificate" in text.lower() or "ssl" in text.lower():
        return SourceError(f"TLS with {url} failed (check ca_file and the server name): {text}")
    return SourceUnavailable(f"LDAP server {url} unreachable: {text}")


def _decode(
    name: str, values: list[bytes], warnings: list[str], binary: list[tuple[str, int]]
) -> list[str]:
    try:
        return [value.decode("utf-8") for value in values]
    except UnicodeDecodeError:
        pass  # some value is binary: keep the text ones, say which were left out
    out = []
    for value in values:
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            binary.append((name, len(value)))
            warnings.append(
                f"attribute {name}: a value of {len(value):,} bytes is not UTF-8 text "
                "(binary data) and was left out"
            )
    return out


def source_id(attribute: str, values: list[bytes]) -> str:
    """The stable id as text; ``objectGUID`` is binary (little-endian UUID) in AD."""
    if attribute.lower() == "objectguid":
        return guid_text(values[0])
    return values[0].decode("utf-8")


def is_disabled(source: LdapSource, attributes: dict[str, list[str]]) -> bool:
    """Whether the account status of an entry says disabled."""
    status = source.account_status
    if status.method == "user_account_control":
        values = attributes.get("useraccountcontrol", [])
        return bool(values) and bool(int(values[0]) & UserAccountControl.ACCOUNTDISABLE)
    if status.method == "flag":
        disabled = {v.upper() for v in status.disabled_values}
        return any(v.upper() in disabled for v in attributes.get(status.attribute.lower(), []))
    return False


def entry_to_user(
    source: LdapSource, dn: str, raw: dict[str, list[bytes]]
) -> SourceUser | tuple[str, str]:
    """One search result as a :class:`SourceUser`, or ``(dn, reason)`` if it has no usable id."""
    id_attribute = source.users.id_attribute or "entryUUID"
    raw_lower = {name.lower(): values for name, values in raw.items()}
    id_values = raw_lower.pop(id_attribute.lower(), [])
    if not id_values:
        return dn, f"no {id_attribute} (the stable source id)"
    warnings: list[str] = []
    binary: list[tuple[str, int]] = []
    attributes = {
        name: _decode(name, values, warnings, binary) for name, values in raw_lower.items()
    }
    try:
        ident = source_id(id_attribute, id_values)
        disabled = is_disabled(source, attributes)
    except (ValueError, UnicodeDecodeError) as exc:
        return dn, f"unreadable {id_attribute} or account status: {exc}"
    return SourceUser(ident, dn, attributes, disabled, tuple(warnings), tuple(binary))


def paged_entries(
    conn: ldap3.Connection,
    source: LdapSource,
    base_dn: str,
    filter_: str,
    scope: str,
    attributes: Iterable[str],
) -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    """Paged search yielding (dn, raw attributes); LDAP failures become source errors."""
    try:
        results = conn.extend.standard.paged_search(
            base_dn,
            filter_,
            search_scope=ldap3.SUBTREE if scope == "subtree" else ldap3.LEVEL,
            dereference_aliases=ldap3.DEREF_NEVER,
            attributes=sorted(set(attributes)),
            paged_size=source.page_size,
            generator=True,
        )
        for item in results:
            if item.get("type") == "searchResEntry":
                yield item["dn"], item["raw_attributes"]
    except ldap_exc.LDAPNoSuchObjectResult as exc:
        raise SourceError(f"base DN {base_dn!r} does not exist") from exc
    except (ldap_exc.LDAPCommunicationError, ldap_exc.LDAPResponseTimeoutError) as exc:
        # The connection was open, its TLS verified and bound: losing it now (a restart, a
        # reset, a TLS record broken in transit, no answer in time) is the directory going
        # away, never a TLS configuration problem, whatever words the TLS layer used.
        raise SourceUnavailable(
            f"LDAP server {source.url} went away during the search of {base_dn!r}: {exc}"
        ) from exc
    except ldap_exc.LDAPException as exc:
        raise SourceError(f"LDAP search of {base_dn!r} failed: {exc}") from exc


def user_attributes(source: LdapSource, mapped: Iterable[str]) -> set[str]:
    """The attributes to read for users: the mapped ones, the id, the status, memberOf."""
    query = source.users
    wanted = {*mapped, *query.attributes, query.id_attribute or "entryUUID"}
    if source.account_status.method == "user_account_control":
        wanted.add("userAccountControl")
    elif source.account_status.method == "flag":
        wanted.add(source.account_status.attribute)
    groups = source.groups
    if groups is not None and groups.members_from == "user_member_of":
        wanted.add(groups.member_of_attribute)
    return wanted


def stream_users(
    conn: ldap3.Connection, source: LdapSource, attributes: Iterable[str], size: int
) -> Iterator[Extraction]:
    """Every user in scope, ``size`` at a time (entries that cannot be tracked set aside): a
    caller keeping what it needs of each batch never holds the whole directory."""
    users: list[SourceUser] = []
    invalid: list[tuple[str, str]] = []
    query = source.users
    wanted = user_attributes(source, attributes)
    for dn, raw in paged_entries(conn, source, query.base_dn, query.filter, query.scope, wanted):
        result = entry_to_user(source, dn, raw)
        if isinstance(result, SourceUser):
            users.append(result)
        else:
            invalid.append(result)
        if len(users) + len(invalid) >= size:
            yield Extraction(users, invalid)
            users, invalid = [], []
    if users or invalid:
        yield Extraction(users, invalid)


def read_users(conn: ldap3.Connection, source: LdapSource, attributes: Iterable[str]) -> Extraction:
    """Every user in scope, with the entries that cannot be tracked set aside."""
    users: list[SourceUser] = []
    invalid: list[tuple[str, str]] = []
    for batch in stream_users(conn, source, attributes, 10_000):
        users += batch.users
        invalid += batch.invalid
    return Extraction(users, invalid)


def log_warnings(users: Iterable[SourceUser]) -> Any:
    """Log the warnings of the first 20 users that have some; return the run logger."""
    logger = run_logger()
    for user in [u for u in users if u.warnings][:20]:
        logger.warning("%s: %s", user.dn, "; ".join(user.warnings))
    return logger


P = ParamSpec("P")
R = TypeVar("R")


class _DirectoryTask:
    """A Prefect task made on first use (a call, ``.fn``, ``.submit`` ...): importing the
    directory code costs no Prefect import, so a sync can read the directory while Prefect
    and its temporary server load (flows/launch.py)."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self._name = name
        self._fn = fn
        self._task: Any = None
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    def _real(self) -> Any:
        with self._lock:
            if self._task is None:
                from prefect import task

                from tasks.results import RUN_SCOPED

                self._task = task(
                    name=self._name,
                    retries=3,
                    retry_delay_seconds=[2, 10, 30],
                    retry_condition_fn=retry_on(SourceUnavailable),
                    cache_policy=RUN_SCOPED,
                    persist_result=True,
                )(self._fn)
            return self._task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._real(), name)


def directory_task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """The decorator of a task reading the directory: retried when the directory was
    unreachable, its result persisted and cached for the flow run (a retried run reuses it).
    The Prefect task is made on first use (:class:`_DirectoryTask`)."""

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return cast("Task[P, R]", _DirectoryTask(name, fn))

    return decorate


@directory_task("extract-from-LDAP")
def extract_users(source: LdapSource, attributes: list[str]) -> Extraction:
    """Read every user in scope from the directory (cached per flow run)."""
    conn = connect(source)
    try:
        extraction = read_users(conn, source, attributes)
    finally:
        conn.unbind()
    logger = log_warnings(extraction.users)
    logger.info(
        "read %d users in scope (%d without a usable id)",
        len(extraction.users),
        len(extraction.invalid),
    )
    return extraction

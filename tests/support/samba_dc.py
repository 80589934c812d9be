"""A real Active Directory for the tests: a private Samba AD domain controller.

Samba's LDAP ports are fixed at 389 and 636, so the DC runs in its own network
namespace (loopback only) and socat bridges two free ports of 127.0.0.1 on the
host to it, through Unix sockets (a network namespace does not separate
filesystem sockets). Its LDAPS certificate is issued by a test CA
(:func:`tests.support.servers.make_tls_files`), so clients verify it with
:attr:`SambaDC.ca_file`.

Provisioning a domain takes a few seconds; a provisioned, never started domain
is kept as a tarball in a cache directory and restored in a fraction of that.

Needs root (``ip netns``) and the Debian packages samba-ad-dc (which brings samba
and winbind), samba-ad-provision, socat and iproute2 (krb5-user is not needed).
Nothing is installed here; see ``deployments/setup.sh``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ldap3 import (
    ASYNC,
    BASE,
    MODIFY_ADD,
    MODIFY_DELETE,
    MODIFY_REPLACE,
    NONE,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import (
    LDAPBindError,
    LDAPCommunicationError,
    LDAPEntryAlreadyExistsResult,
    LDAPException,
)
from ldap3.utils.dn import escape_rdn

from deployments.processes import Child, free_port, log_tail, run
from tests.support.servers import Stoppable, find_tool, make_tls_files

# Tools the DC needs, and the Debian package of each.
REQUIRED_TOOLS = {
    "samba": "samba-ad-dc",
    "samba-tool": "samba-ad-dc",
    "socat": "socat",
    "ip": "iproute2",
}
# samba-tool's provisioning files: only "recommended" by samba-ad-dc, so named as well.
PROVISION_FILES = Path("/usr/share/samba/setup")
DEBIAN_PACKAGES = ("samba-ad-dc", "samba-ad-provision", "socat", "iproute2")
CACHE_FORMAT = "1"
# A safety net: a DC whose test process died without stopping it exits on its own.
MAXIMUM_RUNTIME = 6 * 3600
NAMESPACE_PREFIX = "scim-dc-"

UF_ACCOUNTDISABLE = 0x2
UF_PASSWD_NOTREQD = 0x20
UF_NORMAL_ACCOUNT = 0x200
# A global security group.
GLOBAL_SECURITY_GROUP = -2147483646
# Members per modify request when a group is filled.
MEMBERS_PER_REQUEST = 1000
# Adds in flight at once when users are added in bulk.
PIPELINE_WINDOW = 200

SMB_CONF = """\
[global]
\tnetbios name = {netbios_name}
\trealm = {realm}
\tworkgroup = {domain}
\tserver role = active directory domain controller
\tserver services = ldap
\tinterfaces = 127.0.0.1
\tbind interfaces only = yes
\tprivate dir = {directory}/private
\tlock directory = {directory}
\tstate directory = {directory}/state
\tcache directory = {directory}/cache
\tbinddns dir = {directory}/bind-dns
\tpid directory = {directory}/run
\tncalrpc dir = {directory}/run/ncalrpc
\twinbindd socket directory = {directory}/run/winbindd
\tntp signd socket directory = {directory}/run/ntp_signd
\tlog file = {directory}/log.%m
\ttls enabled = yes
\ttls keyfile = {tls_key}
\ttls certfile = {tls_cert}
\ttls cafile = {tls_ca}
\tldap server require strong auth = no
\tldb:nosync = true
"""


def _clean_env() -> dict[str, str]:
    """The environment of Samba's programs: without the variables of this Python."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }


def missing_prerequisites() -> list[str]:
    """Return what the DC needs and this machine lacks, in words (empty when nothing)."""
    missing = [
        f"{tool} (Debian package {package})"
        for tool, package in REQUIRED_TOOLS.items()
        if find_tool(tool) is None
    ]
    if not PROVISION_FILES.is_dir():
        missing.append(f"{PROVISION_FILES} (Debian package samba-ad-provision)")
    if os.geteuid() != 0:
        missing.append("root privileges (ip netns needs them)")
    return missing


def netns_available() -> tuple[bool, str]:
    """Tell whether this machine lets this process create a network namespace, and if not why."""
    if os.geteuid() != 0:
        return False, "creating a network namespace needs root"
    ip = find_tool("ip")
    if ip is None:
        return False, "the ip command is missing (Debian package iproute2)"
    name = f"{NAMESPACE_PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}"
    result = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return False, f"ip netns add failed: {result.stderr.strip() or result.returncode}"
    subprocess.run([ip, "netns", "delete", name], capture_output=True, check=False)
    return True, ""


def default_cache_directory() -> Path:
    """``$XDG_CACHE_HOME/scim-provisioner/samba-dc`` (``~/.cache`` by default)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "scim-provisioner" / "samba-dc"


class SambaDC(Stoppable):
    """A private Samba AD DC, its files in a work directory, reachable on 127.0.0.1 only.

    :attr:`ldaps_url` serves LDAPS with a certificate of a test CA
    (:attr:`ca_file`); :attr:`ldap_url` plain LDAP. The admin binds with a
    simple bind (NTLM does not work with ldap3). Users go to :attr:`users_dn`,
    groups to :attr:`groups_dn`, both created at start.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        realm: str = "CORP.EXAMPLE.TEST",
        domain: str = "CORP",
        admin_password: str = "Scim-Test-Adm1n!",
        cache_directory: Path | None = None,
        use_cache: bool = True,
    ) -> None:
        """:param cache_directory: where a provisioned domain is kept (default
        :func:`default_cache_directory`); ``use_cache=False`` provisions every time."""
        self.workdir = workdir
        self.realm = realm.upper()
        self.domain = domain.upper()
        self.admin_password = admin_password
        self.cache_directory = cache_directory or default_cache_directory()
        self.use_cache = use_cache
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls_files(workdir / "tls")
        self.ldap_port = free_port()
        self.ldaps_port = free_port()
        while self.ldaps_port == self.ldap_port:
            self.ldaps_port = free_port()
        self.namespace = f"{NAMESPACE_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        # Seconds taken: provision, restore (from the cache), start, add <n> users.
        self.timings: dict[str, float] = {}
        self._directory = workdir / "dc"
        self._log_path = workdir / "samba.log"
        self._socket_directory: Path | None = None
        self._children: list[Child] = []
        self._samba: Child | None = None
        self._namespace_created = False
        self._admin: Connection | None = None

    # -- Names ---------------------------------------------------------------

    @property
    def base_dn(self) -> str:
        """The DN of the domain, e.g. ``DC=corp,DC=example,DC=test``."""
        return ",".join(f"DC={label}" for label in self.realm.lower().split("."))

    @property
    def users_dn(self) -> str:
        """The OU of the users the helpers add."""
        return f"OU=People,{self.base_dn}"

    @property
    def groups_dn(self) -> str:
        """The OU of the groups the helpers add."""
        return f"OU=Groups,{self.base_dn}"

    @property
    def admin_dn(self) -> str:
        """The DN of the domain's Administrator."""
        return f"CN=Administrator,CN=Users,{self.base_dn}"

    @property
    def ca_file(self) -> Path:
        """The PEM file of the CA that issued the DC's certificate."""
        return self.tls.ca_cert

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def log_path(self) -> Path:
        return self._log_path

    # -- Life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Provision (or restore) the domain, start samba in a new network namespace, bridge
        its LDAP ports to 127.0.0.1, and create :attr:`users_dn` and :attr:`groups_dn`.

        :raises RuntimeError: When a prerequisite is missing, or the DC fails to start; what
            was started is stopped again.
        """
        if self._samba is not None:
            raise RuntimeError("the Samba DC is already running")
        missing = missing_prerequisites()
        if missing:
            raise RuntimeError(
                "the Samba AD DC needs: "
                + ", ".join(missing)
                + f" (apt-get install {' '.join(DEBIAN_PACKAGES)})"
            )
        try:
            self._prepare_directory()
            self._write_smb_conf()
            self._launch()
            self._create_ous()
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def stop(self) -> None:
        """Stop socat and samba, and delete the network namespace. Safe to call twice.

        Every step is tried; RuntimeError names those that failed.
        """
        errors: list[str] = []
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.unbind()
            self._admin = None
        for child in reversed(self._children):
            try:
                child.halt(signal.SIGTERM)
            except Exception as error:  # keep going: the namespace must go too
                errors.append(f"stopping {child.name}: {error}")
        self._children = []
        self._samba = None
        if self._namespace_created:
            try:
                self._kill_namespace_processes()
                run([self._tool("ip"), "netns", "delete", self.namespace])
                self._namespace_created = False
            except Exception as error:
                errors.append(f"deleting the network namespace {self.namespace}: {error}")
        if self._socket_directory is not None:
            shutil.rmtree(self._socket_directory, ignore_errors=True)
            self._socket_directory = None
        if errors:
            raise RuntimeError("; ".join(errors))

    def _tool(self, name: str) -> str:
        path = find_tool(name)
        if path is None:
            raise RuntimeError(f"{name} not found: install {REQUIRED_TOOLS.get(name, name)}")
        return path

    def _prepare_directory(self) -> None:
        """Fill the DC's directory with a provisioned domain, from the cache when possible."""
        shutil.rmtree(self._directory, ignore_errors=True)
        started = _now()
        if not self.use_cache:
            self._provision(self._directory)
            self.timings["provision"] = _now() - started
            return
        tarball = self.cache_directory / f"{self._cache_key()}.tar"
        if not tarball.exists():
            self._fill_cache(tarball)
            self.timings["provision"] = _now() - started
            started = _now()
        try:
            with tarfile.open(tarball) as archive:
                archive.extractall(self._directory, filter="data")
        except (OSError, tarfile.TarError):
            # A damaged cache: provision again, once.
            shutil.rmtree(self._directory, ignore_errors=True)
            tarball.unlink(missing_ok=True)
            self._fill_cache(tarball)
            self.timings["provision"] = _now() - started
            started = _now()
            with tarfile.open(tarball) as archive:
                archive.extractall(self._directory, filter="data")
        self.timings["restore"] = _now() - started

    def _cache_key(self) -> str:
        """Name a provisioned domain by what makes it: Samba's version, names and password."""
        version = run([self._tool("samba"), "-V"], env=_clean_env()).strip()
        words = (CACHE_FORMAT, version, self.realm, self.domain, self.admin_password)
        digest = hashlib.sha256("\0".join(words).encode()).hexdigest()[:16]
        return f"{self.domain.lower()}-{digest}"

    def _fill_cache(self, tarball: Path) -> None:
        """Provision a domain in a scratch directory and keep it as ``tarball`` (atomically)."""
        tarball.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="provision-", dir=tarball.parent))
        try:
            self._provision(scratch / "dc")
            partial = scratch / "dc.tar"
            with tarfile.open(partial, "w") as archive:
                for path in sorted((scratch / "dc").iterdir()):
                    archive.add(path, arcname=path.name)
            os.replace(partial, tarball)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _provision(self, directory: Path) -> None:
        """Provision the domain into ``directory`` with samba-tool (a few seconds)."""
        directory.mkdir(parents=True)
        command = [
            self._tool("samba-tool"),
            "domain",
            "provision",
            f"--targetdir={directory}",
            f"--realm={self.realm}",
            f"--domain={self.domain}",
            "--server-role=dc",
            "--dns-backend=NONE",
            "--host-name=dc1",
            f"--adminpass={self.admin_password}",
            "--option=netbios name=DC1",
            "--option=interfaces=127.0.0.1",
            "--option=bind interfaces only=yes",
            "--option=ldb:nosync=true",
        ]
        run(command, env=_clean_env(), timeout=300)

    def _write_smb_conf(self) -> None:
        """Write the DC's smb.conf: its directories, TLS files, and the LDAP service only."""
        for name in ("run", "cache"):
            (self._directory / name).mkdir(exist_ok=True)
        (self._directory / "etc").mkdir(exist_ok=True)
        (self._directory / "etc" / "smb.conf").write_text(
            SMB_CONF.format(
                netbios_name="DC1",
                realm=self.realm,
                domain=self.domain,
                directory=self._directory,
                tls_key=self.tls.server_key,
                tls_cert=self.tls.server_cert,
                tls_ca=self.tls.ca_cert,
            )
        )

    def _launch(self) -> None:
        """Start samba in a new network namespace, bridge its ports, wait until LDAPS answers."""
        ip = self._tool("ip")
        socat = self._tool("socat")
        started = _now()
        run([ip, "netns", "add", self.namespace])
        self._namespace_created = True
        run([ip, "netns", "exec", self.namespace, ip, "link", "set", "lo", "up"])
        # Unix socket paths are limited to 108 bytes: a short directory of their own.
        self._socket_directory = Path(tempfile.mkdtemp(prefix="scim-dc-"))
        for port, inner_port in ((self.ldap_port, 389), (self.ldaps_port, 636)):
            socket_path = self._socket_directory / f"{inner_port}.sock"
            inner = [
                ip,
                "netns",
                "exec",
                self.namespace,
                socat,
                f"UNIX-LISTEN:{socket_path},fork,unlink-early",
                f"TCP:127.0.0.1:{inner_port}",
            ]
            outer = [
                socat,
                f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                f"UNIX-CONNECT:{socket_path}",
            ]
            log = self.workdir / f"socat-{inner_port}.log"
            self._children.append(Child.spawn(f"socat ({inner_port} in)", inner, log))
            self._children.append(Child.spawn(f"socat ({port} out)", outer, log))
        samba = [
            ip,
            "netns",
            "exec",
            self.namespace,
            self._tool("samba"),
            "--interactive",
            "--model=single",
            f"--maximum-runtime={MAXIMUM_RUNTIME}",
            f"--configfile={self._directory / 'etc' / 'smb.conf'}",
        ]
        child = Child.spawn("samba", samba, self._log_path, env=_clean_env())
        self._children.append(child)
        child.wait_until_ready(self._answers)
        self._samba = child
        for bridge in self._children[:-1]:
            if bridge.process.poll() is not None:
                raise RuntimeError(f"{bridge.name} exited:\n{log_tail(bridge.log_path)}")
        self.timings["start"] = _now() - started

    def _answers(self) -> bool:
        """Tell whether the admin can bind over LDAPS (through the bridge)."""
        try:
            connection = self.connection(connect_timeout=1, receive_timeout=2)
        except (LDAPException, OSError):
            return False
        connection.unbind()
        return True

    def _kill_namespace_processes(self) -> None:
        """SIGKILL whatever still runs in the namespace."""
        result = subprocess.run(
            [self._tool("ip"), "netns", "pids", self.namespace],
            capture_output=True,
            text=True,
            check=False,
        )
        for word in result.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(word), signal.SIGKILL)

    def _create_ous(self) -> None:
        admin = self._connection_for_helpers()
        for dn in (self.users_dn, self.groups_dn):
            admin.add(dn, ["top", "organizationalUnit"])

    # -- Clients and helpers -------------------------------------------------

    def connection(self, **options: Any) -> Connection:
        """Return an ldap3 Connection bound as the admin over LDAPS (the CA verified); the
        caller unbinds it.

        Defaults: ``auto_referrals=False``, ``raise_exceptions=True``; ``options`` are given
        to :class:`ldap3.Connection` (e.g. ``auto_range=False,
        return_empty_attributes=False``), except ``connect_timeout`` for the Server.
        """
        connect_timeout = options.pop("connect_timeout", 5)
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file))
        server = Server(
            self.ldaps_url, use_ssl=True, tls=tls, get_info=NONE, connect_timeout=connect_timeout
        )
        settings: dict[str, Any] = {
            "auto_referrals": False,
            "raise_exceptions": True,
            "receive_timeout": 30,
            **options,
        }
        connection = Connection(
            server, user=self.admin_dn, password=self.admin_password, **settings
        )
        try:
            if not connection.bind():
                raise LDAPBindError(f"the admin's bind failed: {connection.result}")
        except BaseException:
            # ldap3 leaves the socket of a failed connect (or bind) open.
            with contextlib.suppress(Exception):
                connection.unbind()
            if connection.socket is not None:
                with contextlib.suppress(Exception):
                    connection.socket.close()
            raise
        return connection

    def _connection_for_helpers(self) -> Connection:
        """The admin connection the helpers share (opened again if it was closed)."""
        if self._admin is None or self._admin.closed:
            self._admin = self.connection()
        return self._admin

    def add_user(
        self,
        sam: str,
        given: str,
        sn: str,
        mail: str | None,
        disabled: bool = False,
        *,
        attributes: Mapping[str, str | Sequence[str]] | None = None,
    ) -> str:
        """Add a user ``CN=<sam>`` to :attr:`users_dn`, without a password; return its DN.

        Its userAccountControl is a normal account that needs no password, plus the
        disabled bit when ``disabled``; ``attributes`` adds more values.
        """
        dn, values = self._user_entry(sam, given, sn, mail, disabled)
        values.update({name: _as_list(value) for name, value in (attributes or {}).items()})
        self._connection_for_helpers().add(dn, attributes=values)
        return dn

    def add_users(self, n: int, prefix: str, *, disabled_every: int = 0) -> list[str]:
        """Add ``n`` users ``<prefix>0001``... (given name ``prefix``, sn the number, a mail);
        every ``disabled_every``-th one disabled. Return their DNs, in order.

        The adds are pipelined on one connection (ldap3's ASYNC strategy), a window of
        :data:`PIPELINE_WINDOW` requests in flight: ~1.4 times the rate of one add at a time.
        """
        width = max(4, len(str(n)))
        entries = []
        for number in range(1, n + 1):
            sam = f"{prefix}{number:0{width}d}"
            disabled = bool(disabled_every) and number % disabled_every == 0
            mail = f"{sam}@{self.realm.lower()}"
            entries.append(self._user_entry(sam, prefix, str(number), mail, disabled))
        started = _now()
        connection = self.connection(client_strategy=ASYNC)
        reconnects = 0
        try:
            first = 0
            while first < n:
                window = entries[first : first + PIPELINE_WINDOW]
                try:
                    message_ids = [connection.add(dn, attributes=values) for dn, values in window]
                    for message_id, (dn, _) in zip(message_ids, window, strict=True):
                        try:
                            _, result = connection.get_response(message_id)
                        except LDAPEntryAlreadyExistsResult:
                            continue  # added before the connection was lost; window redone
                        if result["result"] not in (0, 68):
                            raise RuntimeError(f"adding {dn} failed: {result['description']}")
                except LDAPCommunicationError:
                    # Samba under load sometimes drops the pipelining connection: redo the
                    # window on a new one (a few times at most)
                    reconnects += 1
                    if reconnects > 3:
                        raise
                    with contextlib.suppress(Exception):
                        connection.unbind()
                    connection = self.connection(client_strategy=ASYNC)
                    continue
                first += PIPELINE_WINDOW
        finally:
            with contextlib.suppress(Exception):
                connection.unbind()
        self.timings[f"add {n} users"] = _now() - started
        return [dn for dn, _ in entries]

    def _user_entry(
        self, sam: str, given: str, sn: str, mail: str | None, disabled: bool
    ) -> tuple[str, dict[str, Any]]:
        control = UF_NORMAL_ACCOUNT | UF_PASSWD_NOTREQD | (UF_ACCOUNTDISABLE if disabled else 0)
        values: dict[str, Any] = {
            "objectClass": ["top", "person", "organizationalPerson", "user"],
            "sAMAccountName": sam,
            "userPrincipalName": f"{sam}@{self.realm.lower()}",
            "givenName": given,
            "sn": sn,
            "displayName": f"{given} {sn}",
            "userAccountControl": str(control),
        }
        if mail:
            values["mail"] = mail
        return f"CN={escape_rdn(sam)},{self.users_dn}", values

    def modify(self, dn: str, changes: Mapping[str, Any]) -> None:
        """Modify an entry. Each change is either ldap3's list of ``(operation, values)``, or
        values (a string, a list, or None/[] to remove them all) that replace the current."""
        ldap3_changes: dict[str, list[tuple[str, list[Any]]]] = {}
        for name, change in changes.items():
            if isinstance(change, list) and change and isinstance(change[0], tuple):
                ldap3_changes[name] = change
            else:
                values = [] if change is None else _as_list(change)
                ldap3_changes[name] = [(MODIFY_REPLACE, values)]
        self._connection_for_helpers().modify(dn, ldap3_changes)

    def user_account_control(self, dn: str) -> int:
        """Return the userAccountControl of an entry."""
        admin = self._connection_for_helpers()
        admin.search(dn, "(objectClass=*)", BASE, attributes=["userAccountControl"])
        return int(_single(admin.response[0]["attributes"]["userAccountControl"]))

    def disable(self, dn: str) -> None:
        """Set the disabled bit (2) of a user's userAccountControl."""
        control = self.user_account_control(dn)
        self.modify(dn, {"userAccountControl": str(control | UF_ACCOUNTDISABLE)})

    def enable(self, dn: str) -> None:
        """Clear the disabled bit (2) of a user's userAccountControl."""
        control = self.user_account_control(dn)
        self.modify(dn, {"userAccountControl": str(control & ~UF_ACCOUNTDISABLE)})

    def delete(self, dn: str) -> None:
        """Delete an entry (it becomes a tombstone in CN=Deleted Objects)."""
        self._connection_for_helpers().delete(dn)

    def add_group(self, name: str, members: Iterable[str] = ()) -> str:
        """Add a global security group ``CN=<name>`` to :attr:`groups_dn`; return its DN."""
        dn = f"CN={escape_rdn(name)},{self.groups_dn}"
        values = {
            "objectClass": ["top", "group"],
            "sAMAccountName": name,
            "groupType": str(GLOBAL_SECURITY_GROUP),
        }
        self._connection_for_helpers().add(dn, attributes=values)
        self.add_members(dn, members)
        return dn

    def add_members(self, group_dn: str, members: Iterable[str]) -> None:
        """Add members (DNs) to a group, in requests of :data:`MEMBERS_PER_REQUEST`."""
        self._change_members(group_dn, MODIFY_ADD, list(members))

    def remove_members(self, group_dn: str, members: Iterable[str]) -> None:
        """Remove members (DNs) from a group."""
        self._change_members(group_dn, MODIFY_DELETE, list(members))

    def _change_members(self, group_dn: str, operation: str, members: list[str]) -> None:
        admin = self._connection_for_helpers()
        for first in range(0, len(members), MEMBERS_PER_REQUEST):
            chunk = members[first : first + MEMBERS_PER_REQUEST]
            admin.modify(group_dn, {"member": [(operation, chunk)]})

    def highest_committed_usn(self) -> int:
        """Return the rootDSE's highestCommittedUSN."""
        admin = self._connection_for_helpers()
        admin.search("", "(objectClass=*)", BASE, attributes=["highestCommittedUSN"])
        return int(_single(admin.response[0]["attributes"]["highestCommittedUSN"]))


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str | bytes) else list(value)


def _single(value: Any) -> Any:
    """The value of a single-valued attribute (a list of one without the schema)."""
    return value[0] if isinstance(value, list) else value


def _now() -> float:
    return time.monotonic()

"""Real local servers for the demo and the tests: OpenLDAP's slapd, a SCIM server, an OAuth 2
server.

Each server listens on 127.0.0.1 only, on free ports, runs as a child process,
and keeps its files and its log in a work directory the caller gives.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from deployments.processes import (
    REPO_ROOT,
    Child,
    answers_ok,
    command_line,
    free_port,
    free_ports,
    run,
)

OPENLDAP_TOOLS = ("slapd", "slapadd", "ldapsearch")
SBIN_DIRECTORIES = ("/usr/sbin", "/sbin")
LDAP_MODULE_DIRECTORY = Path("/usr/lib/ldap")
LDAP_SCHEMA_DIRECTORY = Path("/etc/ldap/schema")
BASE_SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
MDB_INDEXES = (
    "objectClass eq",
    "entryUUID eq",
    "entryCSN eq",
    "modifyTimestamp eq",
    "uid eq,pres,sub",
    "cn eq,pres,sub",
    "mail eq,pres,sub",
    "member eq",
)
EC_KEY_OPTIONS = {"-newkey": "ec", "-pkeyopt": "ec_paramgen_curve:prime256v1"}
GUNICORN_OPTIONS = {
    "--worker-class": "gthread",
    "--threads": "8",
    "--workers": "1",
    "--graceful-timeout": "3",
}
DN_SPECIAL_CHARACTERS = frozenset('\\,+"<>;=')

# Lets the tests flag disabled accounts the way 389-DS does.
ACCOUNT_LOCK_SCHEMA_LDIF = """\
dn: cn=accountlock,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: accountlock
olcAttributeTypes: ( 2.16.840.1.113730.3.1.610 NAME 'nsAccountLock'
  DESC '389-DS: the account is disabled when TRUE'
  EQUALITY caseIgnoreMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcObjectClasses: ( 1.3.6.1.4.1.99999.2.1 NAME 'nsAccountLockable'
  DESC 'An entry that may carry nsAccountLock'
  SUP top AUXILIARY MAY nsAccountLock )
"""

OPENSSL_CONFIG = """\
[req]
distinguished_name = subject
prompt = no

[subject]
CN = scim-provisioner test

[ca_extensions]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_extensions]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


# -- OpenLDAP tools ----------------------------------------------------------


def find_tool(name: str) -> str | None:
    """Return the path of a program, looking in the sbin directories too."""
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRECTORIES])
    return shutil.which(name, path=search_path)


def _tool(name: str) -> str:
    """Return the path of an OpenLDAP program; raise RuntimeError when it is missing."""
    path = find_tool(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install the Debian packages slapd and ldap-utils")
    return path


def ensure_openldap_installed() -> None:
    """Install slapd and ldap-utils with apt-get when their programs are missing.

    :raises RuntimeError: When they are missing and the process is not root.
    """
    missing = [name for name in OPENLDAP_TOOLS if find_tool(name) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(
            f"OpenLDAP programs missing ({', '.join(missing)}): "
            "install the Debian packages slapd and ldap-utils (apt-get install slapd ldap-utils)"
        )
    run(["apt-get", "update", "-qq"], timeout=600)
    run(
        ["apt-get", "install", "-y", "-qq", "slapd", "ldap-utils"],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        timeout=600,
    )


def _ldap_client_env() -> dict[str, str]:
    """Return the environment of the OpenLDAP clients, ignoring any ldap.conf or ldaprc."""
    return {**os.environ, "LDAPNOINIT": "1"}


# -- TLS ---------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a test CA and of a server certificate it signed."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _openssl(*words: str, options: Mapping[str, str | Path]) -> None:
    """Run the openssl command line tool."""
    run(command_line("openssl", *words, options=options))


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a self-signed CA and a server certificate it signs, for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    config = directory / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG)
    ca_key = directory / "ca.key"
    request = directory / "server.csr"
    _openssl(
        "req",
        "-x509",
        "-nodes",
        options={
            **EC_KEY_OPTIONS,
            "-keyout": ca_key,
            "-config": config,
            "-extensions": "ca_extensions",
            "-subj": "/CN=scim-provisioner test CA",
            "-days": "3650",
            "-out": files.ca_cert,
        },
    )
    _openssl(
        "req",
        "-new",
        "-nodes",
        options={
            **EC_KEY_OPTIONS,
            "-keyout": files.server_key,
            "-config": config,
            "-subj": "/CN=localhost",
            "-out": request,
        },
    )
    _openssl(
        "x509",
        "-req",
        options={
            "-in": request,
            "-CA": files.ca_cert,
            "-CAkey": ca_key,
            "-set_serial": str(secrets.randbits(63)),
            "-days": "825",
            "-extfile": config,
            "-extensions": "server_extensions",
            "-out": files.server_cert,
        },
    )
    return files


# -- LDIF --------------------------------------------------------------------


def _is_safe_ldif_value(value: str) -> bool:
    """Tell whether LDIF can hold a value as is, rather than in base64 (RFC 2849)."""
    return (
        value.isascii()
        and value[:1] not in (" ", ":", "<")
        and not value.endswith(" ")
        and not any(character in value for character in "\0\r\n")
    )


def _ldif_line(attribute: str, value: str) -> str:
    """Return the LDIF line of an attribute value, in base64 when needed."""
    if _is_safe_ldif_value(value):
        return f"{attribute}: {value}"
    return f"{attribute}:: {base64.b64encode(value.encode()).decode()}"


def _entry_ldif(lines: list[tuple[str, str]]) -> str:
    """Return an LDIF entry, ended by a blank line so that entries can be concatenated."""
    return "".join(f"{_ldif_line(attribute, value)}\n" for attribute, value in lines) + "\n"


def _escape_rdn_value(value: str) -> str:
    """Escape a value for an RDN (RFC 4514)."""
    escaped = "".join(
        f"\\{character}" if character in DN_SPECIAL_CHARACTERS else character for character in value
    )
    if escaped[:1] in (" ", "#"):
        escaped = f"\\{escaped}"
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = f"{escaped[:-1]}\\ "
    return escaped


def _leading_rdn_value(dn: str, attribute: str) -> str:
    """Return the value of the first RDN of a DN; raise ValueError when its attribute differs."""
    name, _, value = dn.split(",", 1)[0].partition("=")
    if name.strip().lower() != attribute.lower() or not value:
        raise ValueError(f"expected a DN starting with {attribute}=: {dn!r}")
    return value.strip()


def ou_ldif(dn: str) -> str:
    """Return the LDIF entry of an organizationalUnit, such as ``ou=people,dc=example,dc=org``."""
    return _entry_ldif(
        [("dn", dn), ("objectClass", "organizationalUnit"), ("ou", _leading_rdn_value(dn, "ou"))]
    )


def person_ldif(
    uid: str,
    *,
    given_name: str,
    surname: str,
    mail: list[str] | None = None,
    ou_dn: str,
    extra: dict[str, list[str]] | None = None,
    locked: bool = False,
) -> str:
    """Return the LDIF entry of the inetOrgPerson ``uid=<uid>,<ou_dn>``.

    Its cn is "<given_name> <surname>"; ``extra`` adds attribute values. A
    locked person is also an nsAccountLockable with ``nsAccountLock: TRUE``,
    as 389-DS flags disabled accounts.
    """
    lines = [
        ("dn", f"uid={_escape_rdn_value(uid)},{ou_dn}"),
        ("objectClass", "inetOrgPerson"),
        *([("objectClass", "nsAccountLockable")] if locked else []),
        ("uid", uid),
        ("cn", f"{given_name} {surname}"),
        ("givenName", given_name),
        ("sn", surname),
        *(("mail", address) for address in mail or []),
        *((attribute, value) for attribute, values in (extra or {}).items() for value in values),
        *([("nsAccountLock", "TRUE")] if locked else []),
    ]
    return _entry_ldif(lines)


def _suffix_ldif(suffix: str) -> str:
    """Return the LDIF entry of the suffix, a dcObject organization."""
    domain_component = _leading_rdn_value(suffix, "dc")
    return _entry_ldif(
        [
            ("dn", suffix),
            ("objectClass", "dcObject"),
            ("objectClass", "organization"),
            ("dc", domain_component),
            ("o", domain_component),
        ]
    )


def _ssha(password: str) -> str:
    """Return the salted SHA-1 hash of a password, as slappasswd writes it."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _config_ldif(
    *, suffix: str, admin_dn: str, admin_password: str, data_directory: Path, tls: TlsFiles
) -> str:
    """Return the cn=config of a slapd serving one mdb database over LDAP, StartTLS and LDAPS."""
    schema_includes = "".join(
        f"include: file://{LDAP_SCHEMA_DIRECTORY / schema}.ldif\n\n" for schema in BASE_SCHEMAS
    )
    indexes = "".join(f"olcDbIndex: {index}\n" for index in MDB_INDEXES)
    return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcTLSCACertificateFile: {tls.ca_cert}
olcTLSCertificateFile: {tls.server_cert}
olcTLSCertificateKeyFile: {tls.server_key}

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {LDAP_MODULE_DIRECTORY}
olcModuleLoad: back_mdb
olcModuleLoad: syncprov
olcModuleLoad: accesslog

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schema_includes}{ACCOUNT_LOCK_SCHEMA_LDIF}
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcAccess: {{0}}to dn.base="" by * read
olcAccess: {{1}}to dn.base="cn=Subschema" by * read

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {data_directory}/accesslog
olcSuffix: cn=accesslog
olcRootDN: {admin_dn}
olcDbMaxSize: 17179869184
olcDbNoSync: TRUE
olcDbIndex: default eq
olcDbIndex: entryCSN,objectClass,reqEnd,reqResult,reqStart,reqDN
olcAccess: {{0}}to * by dn.exact="{admin_dn}" read by * none

dn: olcOverlay=syncprov,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: syncprov
olcSpNoPresent: TRUE
olcSpReloadHint: TRUE

dn: olcDatabase={{2}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{2}}mdb
olcDbDirectory: {data_directory}/main
olcSuffix: {suffix}
olcRootDN: {admin_dn}
olcRootPW: {_ssha(admin_password)}
olcDbMaxSize: 17179869184
olcDbNoSync: TRUE
{indexes}olcAccess: {{0}}to * by anonymous auth by users read

dn: olcOverlay={{0}}syncprov,olcDatabase={{2}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {{0}}syncprov
olcSpCheckpoint: 100 10
olcSpSessionlog: 100000
olcSpSessionlogSource: cn=accesslog

dn: olcOverlay={{1}}accesslog,olcDatabase={{2}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcAccessLogConfig
olcOverlay: {{1}}accesslog
olcAccessLogDB: cn=accesslog
olcAccessLogOps: writes
olcAccessLogSuccess: TRUE
olcAccessLogPurge: 07+00:00 01+00:00
"""


# -- slapd -------------------------------------------------------------------


class Stoppable:
    """``with server:`` stops the server at the end of the block."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class Slapd(Stoppable):
    """A private OpenLDAP slapd, with its own cn=config and mdb database in a work directory.

    It serves LDAP (StartTLS included) and LDAPS on two free ports of
    127.0.0.1, with a certificate of a test CA (:attr:`tls`). Anonymous clients
    may only bind; authenticated ones read everything; the admin is the
    rootdn.
    """

    def __init__(
        self,
        workdir: Path,
        suffix: str = "dc=example,dc=org",
        admin_password: str = "admin-secret",
    ) -> None:
        self.workdir = workdir
        self.suffix = suffix
        self.admin_password = admin_password
        self.ldap_port, self.ldaps_port = free_ports(2)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls_files(workdir / "tls")
        self._config_directory = workdir / "slapd.d"
        self._data_directory = workdir / "data"
        self._log_path = workdir / "slapd.log"
        self._child: Child | None = None

    @property
    def admin_dn(self) -> str:
        """The DN of the admin, the rootdn of the database."""
        return f"cn=admin,{self.suffix}"

    @property
    def ldap_url(self) -> str:
        """The URL of the LDAP listener, which supports StartTLS."""
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        """The URL of the LDAPS listener."""
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def start(self, ldif: str = "") -> None:
        """Build a fresh configuration, load the suffix entry and ``ldif``, and start slapd.

        ``ldif`` holds the entries below the suffix.

        :raises RuntimeError: When slapd is already running, or fails to start.
        """
        if self._child is not None:
            raise RuntimeError("slapd is already running")
        ensure_openldap_installed()
        self._write_config()
        self._load(ldif)
        self._launch()

    def stop(self) -> None:
        """Stop slapd, if it runs."""
        if self._child is not None:
            self._child.halt(signal.SIGTERM)
            self._child = None

    def reload(self, ldif: str) -> None:
        """Restart slapd on the same ports with a new database: the suffix entry and ``ldif``."""
        if not self._config_directory.exists():
            raise RuntimeError("start() slapd before reloading it")
        self.stop()
        self._load(ldif)
        self._launch()

    def restart(self) -> None:
        """Stop slapd if it runs and start it again on the same ports, keeping its data."""
        if not self._config_directory.exists():
            raise RuntimeError("start() slapd before restarting it")
        self.stop()
        self._launch()

    def modify(self, ldif: str) -> None:
        """Apply LDIF changes (changetype add, modify, delete...) as the admin, with ldapmodify."""
        options = {"-H": self.ldap_url, "-D": self.admin_dn, "-w": self.admin_password}
        run(
            command_line(_tool("ldapmodify"), "-x", options=options),
            stdin=ldif,
            env=_ldap_client_env(),
        )

    def _write_config(self) -> None:
        """Write a new cn=config with slapadd, dropping any previous configuration and data."""
        for directory in (self._config_directory, self._data_directory):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
        for database in ("main", "accesslog"):
            (self._data_directory / database).mkdir()
        config_ldif = self.workdir / "config.ldif"
        config_ldif.write_text(
            _config_ldif(
                suffix=self.suffix,
                admin_dn=self.admin_dn,
                admin_password=self.admin_password,
                data_directory=self._data_directory,
                tls=self.tls,
            )
        )
        options = {"-F": self._config_directory, "-l": config_ldif}
        run(command_line(_tool("slapadd"), "-n0", options=options))

    def _load(self, ldif: str) -> None:
        """Replace the database with the suffix entry and ``ldif``, with slapadd."""
        shutil.rmtree(self._data_directory, ignore_errors=True)
        for database in ("main", "accesslog"):
            (self._data_directory / database).mkdir(parents=True)
        data_ldif = self.workdir / "data.ldif"
        data_ldif.write_text(f"{_suffix_ldif(self.suffix)}{ldif}")
        options = {"-F": self._config_directory, "-l": data_ldif}
        # ~100 s per million entries here: allow a minute per 3 MB of LDIF, at least 2 min
        timeout = max(120.0, len(ldif) / 50_000)
        run(
            command_line(_tool("slapadd"), "-q", "-b", self.suffix, options=options),
            timeout=timeout,
        )

    def _launch(self) -> None:
        """Start slapd in the foreground and wait until it answers."""
        options: dict[str, str | Path] = {
            "-F": self._config_directory,
            "-h": f"{self.ldap_url}/ {self.ldaps_url}/",
            # "none" rather than 0: slapd then logs its errors, and only them.
            "-d": "none",
        }
        command = command_line(_tool("slapd"), options=options)
        child = Child.spawn("slapd", command, self._log_path)
        child.wait_until_ready(self._answers)
        self._child = child

    def _answers(self) -> bool:
        """Tell whether slapd answers an anonymous search of its root DSE."""
        options = {"-H": self.ldap_url, "-o": "nettimeout=1", "-s": "base", "-b": ""}
        command = [*command_line(_tool("ldapsearch"), "-x", options=options), "namingContexts"]
        try:
            result = subprocess.run(
                command, capture_output=True, env=_ldap_client_env(), timeout=2, check=False
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0


# -- SCIM server -------------------------------------------------------------


def get_json(url: str) -> Any:
    """The JSON document at ``url`` (a test instrumentation endpoint)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


class _GunicornServer(Stoppable):
    """A WSGI application of this repository served by gunicorn on a free 127.0.0.1 port,
    configured by JSON in one environment variable; subclasses say which and when ready."""

    app: str
    options_variable: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.options: dict[str, Any] = {}
        self._log_path = workdir / "gunicorn.log"
        self._child: Child | None = None

    def start(self) -> None:
        """Start gunicorn and wait until :meth:`_answers`.

        :raises RuntimeError: When the server is already running, or fails to start.
        """
        if self._child is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        options = {**GUNICORN_OPTIONS, "--bind": f"127.0.0.1:{self.port}"}
        command = [
            *command_line(sys.executable, "-m", "gunicorn", "--no-control-socket", options=options),
            self.app,
        ]
        env = {**os.environ, self.options_variable: json.dumps(self.options)}
        child = Child.spawn("gunicorn", command, self._log_path, cwd=REPO_ROOT, env=env)
        child.wait_until_ready(self._answers)
        self._child = child

    def stop(self) -> None:
        """Stop the server, if it runs: gunicorn's quick shutdown, as its data is thrown away."""
        if self._child is not None:
            self._child.halt(signal.SIGQUIT)
            self._child = None

    def _answers(self) -> bool:
        raise NotImplementedError


class ScimServer(_GunicornServer):
    """A real scim2-server, served by gunicorn from :mod:`tests.support.scim_app`.

    Its resources are kept in memory, or in ``storage_file``. The ``/_test`` endpoints of its
    instrumentation give the request counts and empty the storage.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        bearer_token: str | None = None,
        basic: tuple[str, str] | None = None,
        patch_supported: bool = True,
        user_extensions: list[dict[str, Any]] | None = None,
        jwt: dict[str, str] | None = None,
        app: str = "tests.support.scim_app:create_app()",
        prefix: str = "/v2",
        cursor_pagination: bool = False,
        filter_supported: bool = True,
        storage_file: Path | None = None,
    ) -> None:
        """:param app: the WSGI application gunicorn serves (e.g. the tests' SCIM 1.1
        facade, ``tests.scim11_app:create_app()`` with ``prefix="/v1"``).
        :param storage_file: keep the resources in this SQLite file
            (:class:`tests.support.scim_sqlite.SqliteStorage`, e.g. seeded with
            :func:`tests.support.scim_sqlite.seed`) instead of in memory."""
        super().__init__(workdir)
        self.app = app
        self.options_variable = "SCIM_APP_OPTIONS"
        self.prefix = prefix
        self.options = {
            "bearer_tokens": [bearer_token] if bearer_token is not None else [],
            "basic": list(basic) if basic is not None else None,
            "patch_supported": patch_supported,
            "user_extensions": user_extensions or [],
            "jwt": jwt,
            "cursor_pagination": cursor_pagination,
            "filter_supported": filter_supported,
            "storage_file": str(Path(storage_file).resolve()) if storage_file is not None else None,
        }

    @property
    def base_url(self) -> str:
        """The root URL of the SCIM endpoints."""
        return f"{self._root_url}{self.prefix}"

    @property
    def _root_url(self) -> str:
        """The URL of the server, without the SCIM version prefix."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start gunicorn, wait until /ServiceProviderConfig answers, then reset the counts."""
        super().start()
        self.reset_stats()

    def stats(self) -> dict[str, int]:
        """Return the number of requests under /v2 per HTTP method, since the last reset."""
        counts: dict[str, int] = json.loads(self._call("GET", "/_test/stats"))
        return counts

    def reset_stats(self) -> None:
        """Reset the request counts."""
        self._call("POST", "/_test/reset-stats")

    def wipe(self) -> None:
        """Delete every user and group, and reset the request counts."""
        self._call("POST", "/_test/wipe")

    def writes(self) -> int:
        """Return the number of write requests (POST, PUT, PATCH, DELETE) since the last reset."""
        counts = self.stats()
        return sum(counts.get(method, 0) for method in ("POST", "PUT", "PATCH", "DELETE"))

    def _call(self, method: str, path: str) -> bytes:
        """Send a request to an endpoint of the test instrumentation and return its body."""
        data = b"" if method == "POST" else None
        request = urllib.request.Request(f"{self._root_url}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
            return body

    def _answers(self) -> bool:
        """Tell whether the server answers /ServiceProviderConfig with 200."""
        return answers_ok(f"{self.base_url}/ServiceProviderConfig")


class OAuthServer(_GunicornServer):
    """A real OAuth 2 authorization server (authlib, client credentials, RS256 JWTs), served by
    gunicorn from :mod:`tests.support.oauth_app`.

    Give :meth:`resource_server_options` to a :class:`ScimServer` (``jwt=``) so that it accepts
    the tokens this server issues.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        clients: list[dict[str, str]],
        token_lifetime: int = 3600,
        audience: str = "scim",
    ) -> None:
        from joserfc.jwk import KeySet, RSAKey

        super().__init__(workdir)
        self.app = "tests.support.oauth_app:create_app()"
        self.options_variable = "OAUTH_APP_OPTIONS"
        key = RSAKey.generate_key(2048, parameters={"kid": "test-key"}, private=True)
        self.key_file = workdir / "signing-key.json"
        self.key_file.write_text(json.dumps(key.as_dict(private=True)))
        self.jwks_file = workdir / "jwks.json"
        self.jwks_file.write_text(json.dumps(KeySet([key]).as_dict(private=False)))
        self.audience = audience
        self.options = {
            "clients": clients,
            "issuer": self.issuer,
            "audience": audience,
            "token_lifetime": token_lifetime,
            "key_file": str(self.key_file),
        }

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/oauth/token"

    def resource_server_options(self) -> dict[str, str]:
        """The ``jwt`` option of a :class:`ScimServer` that accepts this server's tokens."""
        return {"jwks_file": str(self.jwks_file), "issuer": self.issuer, "audience": self.audience}

    def tokens_issued(self) -> int:
        return int(get_json(f"{self.issuer}/_test/stats")["tokens"])

    def _answers(self) -> bool:
        return answers_ok(f"{self.issuer}/jwks.json")


# -- SAML sign-in ------------------------------------------------------------


class SamlSpServer(_GunicornServer):
    """A SAML service provider on python3-saml (:mod:`tests.support.saml_sp_app`): the
    application a person signs in to. Its port is taken at construction, so its metadata
    (:meth:`metadata`) can be handed to the IdP before either starts; it reads the IdP's
    metadata from ``idp_metadata_url`` when it starts."""

    def __init__(
        self, workdir: Path, *, idp_metadata_url: str, sign_requests: bool = False
    ) -> None:
        super().__init__(workdir)
        self.app = "tests.support.saml_sp_app:create_app()"
        self.options_variable = "SAML_SP_APP_OPTIONS"
        self.options = {
            "base_url": self.base_url,
            "idp_metadata_url": idp_metadata_url,
            "sign_requests": sign_requests,
        }
        if sign_requests:
            key, cert = workdir / "sp.key", workdir / "sp.crt"
            _openssl(
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                "-subj", "/CN=test-sp",
                options={"-keyout": key, "-out": cert},
            )  # fmt: skip
            self.options.update(key_file=str(key), cert_file=str(cert))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metadata(self) -> str:
        from tests.support.saml_sp_app import sp_metadata

        return sp_metadata(self.options)

    def last(self) -> dict[str, Any]:
        """The last Response the SP's ACS processed: errors, NameID, attributes."""
        return dict(get_json(f"{self.base_url}/_test/last"))

    def _answers(self) -> bool:
        return answers_ok(f"{self.base_url}/metadata")


class SsoServer(Stoppable):
    """``scim-provisioner sso serve --config FILE``: the product's identity provider, as an
    operator starts it (its own process, the console script)."""

    def __init__(self, workdir: Path, config: Path, port: int, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.port = port
        self.env = dict(env)
        self._child: Child | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        script = Path(sys.executable).with_name("scim-provisioner")
        command = [str(script), "sso", "serve", "--config", str(self.config)]
        child = Child.spawn(
            "sso", command, self.workdir / "sso.log", cwd=REPO_ROOT, env={**os.environ, **self.env}
        )
        child.wait_until_ready(self._answers)
        self._child = child

    def stop(self) -> None:
        if self._child is not None:
            self._child.halt(signal.SIGTERM)
            self._child = None

    def log(self) -> str:
        return (self.workdir / "sso.log").read_text(errors="replace")

    def _answers(self) -> bool:
        return answers_ok(f"{self.base_url}/healthz")


class OidcRpServer(_GunicornServer):
    """An OpenID Connect relying party (:mod:`tests.support.oidc_rp_app`); its port is taken
    at construction, so its redirect URI can go in the IdP's config first."""

    def __init__(
        self, workdir: Path, *, issuer: str, client_id: str, client_secret: str | None
    ) -> None:
        super().__init__(workdir)
        self.app = "tests.support.oidc_rp_app:create_app()"
        self.options_variable = "OIDC_RP_APP_OPTIONS"
        self.options = {
            "base_url": self.base_url,
            "issuer": issuer,
            "client_id": client_id,
            "client_secret": client_secret,
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url}/callback"

    def last(self) -> dict[str, Any]:
        """The last callback's outcome: claims, userinfo, or the error."""
        return dict(get_json(f"{self.base_url}/_test/last"))

    def _answers(self) -> bool:
        return answers_ok(f"{self.base_url}/")

"""The provisioner's configuration: one YAML file, one LDAP source, one or more SCIM targets.

Every model forbids unknown keys, so a typo is an error that names the key. Secrets are never
written in the file: a secret is a reference, ``{env: NAME}`` or ``{prefect_secret: BLOCK}``,
resolved only when a connection is made.
"""

from __future__ import annotations

import ipaddress
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks import expressions
from tasks.errors import ConfigError

CORE_USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE_USER_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """Where a secret lives: an environment variable or a Prefect Secret block."""

    env: str | None = Field(None, description="Name of the environment variable holding it.")
    prefect_secret: str | None = Field(None, description="Name of the Prefect Secret block.")

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: Any) -> Any:
        if isinstance(data, str):
            raise ValueError(
                "secrets are not written in the config file; "
                "use {env: VARIABLE_NAME} or {prefect_secret: BLOCK_NAME}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.prefect_secret is None):
            raise ValueError("give exactly one of 'env' or 'prefect_secret'")
        return self

    def resolve(self) -> SecretStr:
        """Read the secret now; raise :class:`ConfigError` naming the reference if it is missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"environment variable {self.env} (a secret) is not set")
            return SecretStr(value)
        from prefect.blocks.system import Secret

        try:
            block = cast(Secret[str], Secret.load(cast(str, self.prefect_secret)))
        except ValueError as exc:
            raise ConfigError(f"Prefect Secret block {self.prefect_secret!r} not found") from exc
        return SecretStr(str(block.get()))


class DirectoryType(StrEnum):
    openldap = "openldap"
    active_directory = "active_directory"


class TlsMode(StrEnum):
    ldaps = "ldaps"
    starttls = "starttls"
    none = "none"


def _ldap_filter(value: str) -> str:
    value = value.strip()
    balanced = value.count("(") == value.count(")")
    if not (value.startswith("(") and value.endswith(")") and balanced):
        raise ValueError("an LDAP filter in parentheses, e.g. (objectClass=inetOrgPerson)")
    return value


LdapFilter = Annotated[str, AfterValidator(_ldap_filter)]


class UsersQuery(_Model):
    base_dn: str = Field(description="Where the users live, e.g. ou=people,dc=example,dc=org.")
    filter: LdapFilter = Field(
        "(objectClass=inetOrgPerson)", description="LDAP filter selecting the users in scope."
    )
    scope: Literal["subtree", "one"] = "subtree"
    id_attribute: str | None = Field(
        None,
        description="Stable source id; default entryUUID (OpenLDAP) or objectGUID (AD).",
    )
    attributes: tuple[str, ...] = Field(
        (), description="Extra attributes to read beyond those the mappings use."
    )


class GroupsQuery(_Model):
    """Where the groups are and how their members are read."""

    base_dn: str = Field(description="Where the groups live, e.g. ou=groups,dc=example,dc=org.")
    filter: LdapFilter = Field(
        "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))",
        description="LDAP filter selecting the groups in scope.",
    )
    scope: Literal["subtree", "one"] = "subtree"
    id_attribute: str | None = Field(
        None, description="Stable source id; default the users' id attribute."
    )
    name_attribute: str = Field("cn", description="Attribute naming the group (displayName).")
    members_from: Literal["group", "user_member_of"] = Field(
        "group",
        description="group: the groups' member attribute(s) hold user DNs; user_member_of: "
        "the users' memberOf attribute holds group DNs.",
    )
    member_attributes: tuple[str, ...] = Field(
        ("member", "uniqueMember"), description="Group attributes holding member DNs."
    )
    member_of_attribute: str = Field("memberOf", description="User attribute holding group DNs.")
    flatten_nested: bool = Field(
        False, description="Members of nested groups become members (cycles are detected)."
    )
    sync_with_users: bool = Field(
        True, description="provision_users also syncs the groups right after the users."
    )


class AccountStatus(_Model):
    """How a disabled account is recognised in the directory."""

    method: Literal["none", "user_account_control", "flag"] | None = Field(
        None,
        description="none, user_account_control (AD ACCOUNTDISABLE bit) or flag; "
        "default user_account_control for AD, else none.",
    )
    attribute: str = Field("nsAccountLock", description="The flag attribute (method flag).")
    disabled_values: tuple[str, ...] = Field(
        ("TRUE",), description="Values of the flag attribute meaning disabled (case-insensitive)."
    )


class LdapSource(_Model):
    type: DirectoryType = DirectoryType.openldap
    url: str = Field(description="ldap://host:389 or ldaps://host:636.")
    failover_urls: tuple[str, ...] = Field(
        (),
        description="More servers of the same directory (replicas, other DCs), tried in "
        "order when the one before is unreachable; same scheme as url.",
    )
    tls: TlsMode | None = Field(
        None, description="ldaps, starttls or none; default ldaps for ldaps://, else starttls."
    )
    verify_tls: bool = True
    ca_file: Path | None = None
    bind_dn: str | None = None
    bind_password: SecretRef | None = None
    connect_timeout: float = Field(10, gt=0)
    receive_timeout: float = Field(120, gt=0)
    page_size: int = Field(500, ge=1, le=10000)
    change_detection: (
        Literal["full", "timestamp", "timestamp_no_negation", "ad_usn", "syncrepl"] | None
    ) = Field(
        None,
        description="How a cycle finds what changed: full (read everyone), timestamp "
        "(modifyTimestamp >= watermark), timestamp_no_negation (>), ad_usn (uSNChanged, "
        "AD), syncrepl (RFC 4533 cookie, OpenLDAP syncprov); default ad_usn for AD, "
        "else timestamp.",
    )
    timestamp_overlap_seconds: float = Field(
        60,
        ge=0,
        description="Timestamp methods: the watermark never passes the cycle's start minus "
        "this, so a change made during a search, or a clock a little off, is read again "
        "rather than missed.",
    )
    users: UsersQuery
    groups: GroupsQuery | None = Field(None, description="Groups to provision (optional).")
    account_status: AccountStatus = AccountStatus()

    @field_validator("url")
    @classmethod
    def _ldap_url(cls, value: str) -> str:
        if not re.match(r"^ldaps?://[^/\s]+/?$", value):
            raise ValueError("an URL like ldap://host:389 or ldaps://host:636")
        return value.rstrip("/")

    @field_validator("failover_urls")
    @classmethod
    def _ldap_urls(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(cls._ldap_url(v) for v in values)

    @model_validator(mode="after")
    def _same_scheme(self) -> LdapSource:
        scheme = self.url.split(":", 1)[0]
        for other in self.failover_urls:
            if other.split(":", 1)[0] != scheme:
                raise ValueError(f"failover_urls: {other} is not {scheme}:// like url")
        return self

    @model_validator(mode="after")
    def _defaults(self) -> LdapSource:
        ad = self.type is DirectoryType.active_directory
        if self.tls is None:
            object.__setattr__(
                self, "tls", TlsMode.ldaps if self.url.startswith("ldaps://") else TlsMode.starttls
            )
        if self.url.startswith("ldaps://") and self.tls is not TlsMode.ldaps:
            raise ValueError("an ldaps:// url needs tls: ldaps")
        if self.tls is TlsMode.ldaps and not self.url.startswith("ldaps://"):
            raise ValueError("tls: ldaps needs an ldaps:// url")
        if self.users.id_attribute is None:
            users = self.users.model_copy(
                update={"id_attribute": "objectGUID" if ad else "entryUUID"}
            )
            object.__setattr__(self, "users", users)
        if self.groups is not None and self.groups.id_attribute is None:
            groups = self.groups.model_copy(update={"id_attribute": self.users.id_attribute})
            object.__setattr__(self, "groups", groups)
        if self.change_detection is None:
            object.__setattr__(self, "change_detection", "ad_usn" if ad else "timestamp")
        if self.change_detection == "ad_usn" and not ad:
            raise ValueError("change_detection ad_usn needs type: active_directory")
        if self.change_detection == "syncrepl":
            ids = [self.users.id_attribute, *([self.groups.id_attribute] if self.groups else [])]
            if any((i or "entryUUID").lower() != "entryuuid" for i in ids):
                raise ValueError(
                    "change_detection syncrepl names deleted entries by entryUUID: the users' "
                    "and groups' id_attribute must be entryUUID"
                )
        if self.account_status.method is None:
            status = self.account_status.model_copy(
                update={"method": "user_account_control" if ad else "none"}
            )
            object.__setattr__(self, "account_status", status)
        if (self.bind_dn is None) != (self.bind_password is None):
            raise ValueError("bind_dn and bind_password go together (or neither, for anonymous)")
        return self


class AuthConfig(_Model):
    """How the provisioner authenticates to a target: none, HTTP Basic, a static bearer token,
    or OAuth 2 client credentials."""

    type: Literal["none", "basic", "bearer", "oauth2_client_credentials"] = "none"
    username: str | None = None
    password: SecretRef | None = None
    token: SecretRef | None = None
    token_url: str | None = Field(None, description="OAuth 2 token endpoint.")
    client_id: str | None = None
    client_secret: SecretRef | None = None
    scopes: tuple[str, ...] = ()
    client_auth: Literal["header", "body"] = Field(
        "header",
        description="Client credentials in the Authorization header (client_secret_basic) "
        "or in the request body (client_secret_post).",
    )
    header_type: str = Field(
        "Bearer",
        pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
        description="The Authorization header's type before the token (bearer and OAuth), for "
        "targets that want another word than Bearer (e.g. Token, SSWS).",
    )

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        if self.type == "basic" and (self.username is None or self.password is None):
            raise ValueError("auth type basic needs username and password")
        if self.type == "bearer" and self.token is None:
            raise ValueError("auth type bearer needs token")
        if self.type == "oauth2_client_credentials":
            missing = [
                key
                for key in ("token_url", "client_id", "client_secret")
                if getattr(self, key) is None
            ]
            if missing:
                raise ValueError(f"auth type oauth2_client_credentials needs {', '.join(missing)}")
            if not re.match(r"^https?://\S+$", self.token_url or ""):
                raise ValueError("token_url: an URL like https://login.example.com/oauth/token")
        return self


class MultiValuedRule(_Model):
    """One source of entries of a multi-valued SCIM attribute (emails, phoneNumbers, ...).

    Every value of the source attribute becomes one entry with this ``type``; the first one is
    marked primary when ``primary`` is set.
    """

    value: str
    type: str | None = None
    primary: bool = False
    display: str | None = None

    @field_validator("value", "display")
    @classmethod
    def _expression(cls, value: str | None) -> str | None:
        if value is not None:
            expressions.check(value)
        return value


MappingValue = str | dict[str, Any] | list[MultiValuedRule]

DEFAULT_USER_MAPPING: dict[str, Any] = {
    "userName": "uid",
    "externalId": "$id",
    "displayName": "cn",
    "name": {"givenName": "givenName", "familyName": "sn", "formatted": "cn"},
    "title": "title",
    "emails": [{"value": "mail", "type": "work", "primary": True}],
    "phoneNumbers": [
        {"value": "telephoneNumber", "type": "work"},
        {"value": "mobile", "type": "mobile"},
    ],
    ENTERPRISE_USER_SCHEMA: {
        "employeeNumber": "employeeNumber",
        "department": "departmentNumber",
    },
}


def _validate_mapping(mapping: dict[str, Any], where: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{where}{key}"
        if key in ("active", "id", "meta", "schemas"):
            raise ValueError(f"{path}: set by the provisioner, it cannot be mapped")
        if isinstance(value, str):
            try:
                expressions.check(value)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            out[key] = value
        elif isinstance(value, list):
            out[key] = [MultiValuedRule.model_validate(rule) for rule in value]
        elif isinstance(value, dict):
            out[key] = _validate_mapping(value, f"{path}.")
        else:
            raise ValueError(
                f"{path}: expected an LDAP attribute name, a '{{template}}', "
                "a mapping of sub-attributes or a list of {value, type, primary}"
            )
    return out


class DeprovisionGuard(_Model):
    """Halt before mass deprovisioning: a run that would disable or delete more than
    ``max_count`` users, or more than ``max_share`` of the target's managed users (once at
    least ``min_count`` are concerned), asks for approval instead."""

    enabled: bool = True
    max_count: int = Field(50, ge=0)
    max_share: float = Field(0.10, ge=0, le=1)
    min_count: int = Field(10, ge=1, description="Below this many, the share alone never halts.")


class TargetScope(_Model):
    """Which of the source's users and groups this target receives (PingFederate's
    per-channel source location and "Group DN" option). The directory is still read once per
    run for every target; the directory server evaluates the filters."""

    users_filter: LdapFilter | None = Field(
        None,
        description="An LDAP filter the target's users must match too, on top of "
        "source.users.filter, e.g. (departmentNumber=Sales).",
    )
    member_of: tuple[str, ...] = Field(
        (),
        description="Group DNs: the target receives only users who are members of at least "
        "one of them (read from the groups' member attributes; works without memberOf).",
    )
    nested: bool = Field(
        False, description="member_of counts the members of nested groups too (any depth)."
    )
    groups_filter: LdapFilter | None = Field(
        None,
        description="An LDAP filter the target's groups must match too, on top of "
        "source.groups.filter, e.g. (cn=app-*).",
    )
    group_dns: tuple[str, ...] = Field(
        (), description="Only these groups (their DNs) are provisioned to the target."
    )

    @field_validator("member_of", "group_dns")
    @classmethod
    def _dns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for dn in value:
            if "=" not in dn:
                raise ValueError(
                    f"{dn!r} is not a DN (like cn=app-users,ou=groups,dc=example,dc=org)"
                )
        return value

    @property
    def users(self) -> bool:
        """Whether this scope narrows the users."""
        return self.users_filter is not None or bool(self.member_of)

    @property
    def groups(self) -> bool:
        """Whether this scope narrows the groups."""
        return self.groups_filter is not None or bool(self.group_dns)


NAME_ID_FORMATS = {
    "unspecified": "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
    "emailAddress": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    "persistent": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
}
"""The NameID formats the IdP asserts, by the name used in the config."""


class TargetOidc(_Model):
    """The application as an OpenID Connect client (code flow, PKCE S256 required)."""

    client_id: str = Field(min_length=1, description="The client id the application sends.")
    client_secret: SecretRef | None = Field(
        None,
        description="Its secret (a confidential client: client_secret_basic or _post); none: a "
        "public client that proves itself by PKCE alone.",
    )
    redirect_uris: Annotated[tuple[str, ...], Field(min_length=1)] = Field(
        description="The exact redirect URIs the application may ask for (https://, or "
        "http:// on this machine)."
    )

    @field_validator("redirect_uris")
    @classmethod
    def _redirects(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uri in value:
            if not (uri.startswith("https://") or (uri.startswith("http://") and _loopback(uri))):
                raise ValueError(f"{uri}: an https:// URI (http:// only on this machine)")
        return value


class TargetSso(_Model):
    """Sign-in to this target's application through the provisioner's identity provider
    (``scim-provisioner sso serve``), by SAML 2.0 and/or OpenID Connect: only people
    provisioned and active here get in."""

    sp_metadata: str | None = Field(
        None,
        description="The application's SAML SP metadata: a file (relative to the config file) "
        "or an https:// URL.",
    )
    oidc: TargetOidc | None = Field(
        None, description="The application as an OpenID Connect client."
    )
    label: str | None = Field(None, description="The name on the launcher; default the target's.")
    name_id: Literal["userName", "externalId"] = Field(
        "userName",
        description="Which provisioned value the NameID carries: the userName or the externalId "
        "the provisioner wrote to this target (so the application finds that very account).",
    )
    name_id_format: Literal["unspecified", "emailAddress", "persistent"] = "unspecified"
    attributes: dict[str, str] = Field(
        default_factory=dict,
        description="SAML attributes to release: name -> an expression over directory "
        "attributes, as in the mapping (e.g. email: mail, displayName: '{givenName} {sn}').",
    )
    require_signed_requests: bool | None = Field(
        None,
        description="Refuse AuthnRequests that are not signed by the SP's metadata key; default "
        "what the metadata says (AuthnRequestsSigned).",
    )

    @field_validator("attributes")
    @classmethod
    def _expressions(cls, value: dict[str, str]) -> dict[str, str]:
        for name, expression in value.items():
            try:
                expressions.check(expression)
            except ValueError as exc:
                raise ValueError(f"attributes.{name}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _a_protocol(self) -> TargetSso:
        if self.sp_metadata is None and self.oidc is None:
            raise ValueError("give sp_metadata (SAML), oidc (OpenID Connect) or both")
        return self

    @field_validator("sp_metadata")
    @classmethod
    def _metadata_location(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if re.match(r"^[a-z]+://", value) and not (
            value.startswith("https://") or (value.startswith("http://") and _loopback(value))
        ):
            raise ValueError("a file, or an https:// URL (metadata holds the keys to trust)")
        return value

    def metadata_url(self) -> bool:
        return bool(re.match(r"^https?://", self.sp_metadata or ""))


class SsoThrottle(_Model):
    """Password attempts allowed before sign-in is refused for a while."""

    failures_per_user: int = Field(5, ge=1, description="Failed passwords per login name.")
    failures_per_address: int = Field(20, ge=1, description="Failed passwords per client address.")
    window_minutes: float = Field(
        15,
        gt=0,
        description="Failures older than this are forgotten; a blocked login waits it out.",
    )


class SsoConfig(_Model):
    """The SAML 2.0 identity provider (``scim-provisioner sso serve``), over the source
    directory and the state store; each target with an ``sso`` block is an application."""

    base_url: str = Field(
        description="The URL people and applications reach the IdP at, e.g. "
        "https://sso.example.com (http:// only on this machine: passwords are typed here)."
    )
    entity_id: str | None = Field(
        None, description="The IdP's entity id; default base_url/metadata."
    )
    host: str = Field("127.0.0.1", description="Address the server listens on.")
    port: int | None = Field(
        None, ge=1, le=65535, description="Port it listens on; default base_url's port (or 8443)."
    )
    signing_key: Path = Field(
        Path("sso/idp-signing.key"),
        description="The IdP's RSA signing key (PEM); generated with the certificate on first "
        "start when both are absent.",
    )
    signing_cert: Path = Field(Path("sso/idp-signing.crt"), description="Its certificate (PEM).")
    tls_cert: Path | None = Field(
        None, description="Serve HTTPS with this certificate (else TLS ends at a proxy in front)."
    )
    tls_key: Path | None = None
    login_attribute: str | None = Field(
        None,
        description="The directory attribute people type as their login; default uid "
        "(OpenLDAP) or sAMAccountName (AD).",
    )
    session_minutes: float = Field(480, gt=0, description="How long a sign-in lasts at the IdP.")
    assertion_minutes: float = Field(
        5, gt=0, le=60, description="How long an assertion is valid (NotOnOrAfter)."
    )
    throttle: SsoThrottle = SsoThrottle()
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="Addresses of the reverse proxies in front (their X-Forwarded-For names "
        "the client, for the per-address throttle); none: the connection's address.",
    )
    allow_insecure_http: bool = Field(
        False, description="Serve the sign-in page over plain http:// to other machines."
    )

    @field_validator("base_url")
    @classmethod
    def _base(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError("an URL like https://sso.example.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _safe(self) -> SsoConfig:
        plain = self.base_url.startswith("http://") and not _loopback(self.base_url)
        if plain and not self.allow_insecure_http:
            raise ValueError(
                f"base_url {self.base_url}: passwords would travel unencrypted; use "
                "https:// (tls_cert/tls_key, or a TLS proxy in front), or set "
                "allow_insecure_http: true"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.entity_id is None:
            object.__setattr__(self, "entity_id", f"{self.base_url}/metadata")
        if self.port is None:
            parts = urlsplit(self.base_url)
            object.__setattr__(self, "port", parts.port or 8443)
        return self

    @property
    def secure(self) -> bool:
        """Whether people reach the IdP over TLS (its cookies are then Secure)."""
        return self.base_url.startswith("https://")


class TargetConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    url: str = Field(description="Base URL of the SCIM service, e.g. https://app/scim/v2.")
    scim_version: Literal["2.0", "1.1"] = "2.0"
    dialect: Literal["generic", "aws", "entra", "slack"] = Field(
        "generic",
        description="Vendor profile: aws (IAM Identity Center), entra (targets expecting "
        "Entra's PATCH forms), slack (a Slack-like SCIM 1.1 target), or generic.",
    )
    auth: AuthConfig = AuthConfig()
    users_path: str = Field(
        "/Users",
        pattern=r"^/[^?#\s]*$",
        description="The target's Users endpoint, relative to url (some targets use another).",
    )
    groups_path: str = Field(
        "/Groups",
        pattern=r"^/[^?#\s]*$",
        description="The target's Groups endpoint, relative to url.",
    )
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout: float = Field(
        60,
        gt=0,
        description="Seconds a request may take, its whole answer included (a deadline, "
        "not per read).",
    )
    max_response_bytes: int = Field(
        33_554_432,
        ge=65_536,
        description="The largest answer read from this target (32 MiB); a bigger one fails "
        "that request instead of filling memory.",
    )
    max_retries: int = Field(5, ge=0, le=20)
    max_backoff: float = Field(60, gt=0)
    circuit_breaker: int = Field(
        20,
        ge=1,
        description="Stop the run after this many requests in a row failed after retries.",
    )
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")
    requests_per_second: float | None = Field(
        None,
        gt=0,
        description="Client-side rate limit (e.g. 10 for Slack's 600/min); none by default.",
    )
    batch_size: int = Field(500, ge=1, le=10000)
    max_user_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest SCIM user (its JSON body, in bytes) sent to this target; a bigger "
        "one is rejected with its size, not sent.",
    )
    user_match_filter: str = Field(
        'userName eq "%s"', description="Filter used to find an existing user; %s is the value."
    )
    user_match_attribute: str = Field(
        "userName", description="SCIM attribute whose desired value fills the %s."
    )
    adopt_existing: Literal["on_match", "verified", "never"] = Field(
        "on_match",
        description="An account already on the target that user_match_filter finds: on_match "
        "adopts it (aligning what we manage); verified adopts it only when its externalId or "
        "email is the directory user's too; never refuses (the user is reported).",
    )
    protected_accounts: tuple[str, ...] = Field(
        (),
        description="Shell patterns (e.g. svc-*, admin) of target userNames never adopted or "
        "changed, whatever adopt_existing says.",
    )
    update_method: Literal["auto", "patch", "put"] = Field(
        "auto", description="User updates: PATCH when the target advertises it (auto), or always."
    )
    group_update_method: Literal["auto", "patch", "put"] = Field(
        "auto",
        description="Group changes (renames, members): member-delta PATCHes when the target "
        "advertises PATCH (auto), or always; put sends the whole group.",
    )
    use_bulk: Literal["auto", "never"] = Field(
        "auto",
        description="auto: send creates and updates in Bulk requests when the target "
        "advertises Bulk; never: one request per change.",
    )
    create_users: bool = True
    update_users: bool = True
    deprovision_users: bool = True
    remove_action: Literal["disable", "delete"] = "disable"
    delete_disabled_after_days: int | None = Field(
        None,
        ge=0,
        description="With remove_action disable: delete a user the provisioner disabled this "
        "many days ago and who has not come back (none: never delete).",
    )
    provision_disabled_users: bool = False
    disabled_users_keep_groups: bool = Field(
        False,
        description="With provision_disabled_users: users provisioned disabled (pre-hires, "
        "locked accounts in scope) keep their group memberships; users deprovisioned by a "
        "remove action never do.",
    )
    deprovision_unmanaged: bool = Field(
        False,
        description="Reconciliation disables/deletes (remove_action) target users that no "
        "directory entry accounts for; off: they are reported and left alone.",
    )
    deprovision_guard: DeprovisionGuard = DeprovisionGuard()
    sync_groups: bool = Field(True, description="Provision groups (when the source has groups).")
    create_groups: bool = True
    update_groups: bool = Field(True, description="Rename groups and change their members.")
    delete_groups: bool = True
    group_name_source: Literal["cn", "dn"] = Field(
        "cn", description="displayName from the group's name attribute (cn) or its DN."
    )
    group_match_filter: str = Field(
        'displayName eq "%s"', description="Filter used to find an existing group."
    )
    group_match_attribute: Literal["displayName", "externalId"] = "displayName"
    membership_mode: Literal["authoritative", "additive"] = Field(
        "authoritative",
        description="authoritative: the directory's membership replaces the target's; "
        "additive: never remove a member the provisioner did not add.",
    )
    max_members_per_request: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="Member changes per request: per PATCH (default bulk.maxOperations from "
        "/ServiceProviderConfig, else 100) and in a new group's POST (default all of them; "
        "a 413 answer makes it send fewer).",
    )
    mapping: dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_USER_MAPPING), validate_default=True
    )
    scope: TargetScope | None = Field(
        None,
        description="Narrow the users and groups this target receives; a user leaving the "
        "scope is deprovisioned here (remove action, guard) and stays in the other targets.",
    )
    sso: TargetSso | None = Field(
        None, description="Sign-in to this application through the IdP (docs/sso.md)."
    )
    allow_insecure_http: bool = Field(
        False,
        description="Send this target's credentials over plain http:// to a host other than "
        "this machine (refused otherwise; a warning at every run when allowed).",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://\S+$", value):
            raise ValueError("an URL like https://app.example.com/scim/v2")
        return value.rstrip("/")

    def plaintext_credentials(self) -> list[str]:
        """The URLs to which this target's credentials would travel unencrypted (plain
        ``http://`` to a host that is not this machine)."""
        if self.auth.type == "none":
            return []
        urls = [self.url, *([self.auth.token_url] if self.auth.token_url else [])]
        return [u for u in urls if u.lower().startswith("http://") and not _loopback(u)]

    @model_validator(mode="after")
    def _no_plaintext_credentials(self) -> TargetConfig:
        clear = self.plaintext_credentials()
        if clear and not self.allow_insecure_http:
            raise ValueError(
                f"auth {self.auth.type} would send credentials unencrypted to {clear[0]}: use "
                "https://, or set allow_insecure_http: true if this network is trusted"
            )
        return self

    @model_validator(mode="after")
    def _keep_groups_needs_disabled_users(self) -> TargetConfig:
        if self.disabled_users_keep_groups and not self.provision_disabled_users:
            raise ValueError(
                "disabled_users_keep_groups needs provision_disabled_users: true (without it, "
                "disabled users are not provisioned, so not in groups)"
            )
        return self

    @model_validator(mode="after")
    def _dialect_fits(self) -> TargetConfig:
        needs = {"aws": "2.0", "entra": "2.0", "slack": "1.1"}.get(self.dialect)
        if needs and self.scim_version != needs:
            raise ValueError(
                f"dialect {self.dialect} speaks SCIM {needs}: set scim_version: {needs!r}"
            )
        if self.dialect == "aws":
            for key in ("user_match_filter", "group_match_filter"):
                if re.search(r"\b(or|not|co|sw|ew|pr|gt|ge|lt|le|ne)\b", getattr(self, key)):
                    raise ValueError(
                        f"{key}: AWS IAM Identity Center filters allow only eq and and"
                    )
        return self

    @model_validator(mode="after")
    def _sso_name_id_mapped(self) -> TargetConfig:
        sso = self.sso
        if sso is not None and sso.name_id == "externalId" and "externalId" not in self.mapping:
            raise ValueError(
                "sso.name_id externalId: the mapping writes no externalId to this target"
            )
        return self

    @field_validator("user_match_filter", "group_match_filter")
    @classmethod
    def _one_placeholder(cls, value: str) -> str:
        if value.count("%s") != 1:
            raise ValueError('a SCIM filter with exactly one %s, e.g. userName eq "%s"')
        return value

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, value: dict[str, Any]) -> dict[str, Any]:
        mapping = _validate_mapping(value)
        if "userName" not in mapping:
            raise ValueError("userName must be mapped (SCIM requires it)")
        return mapping


def _loopback(url: str) -> bool:
    """Whether a URL's host is this machine (127.0.0.0/8, ::1, localhost)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StateConfig(_Model):
    url: str = Field(
        "sqlite:///state.db",
        description="SQLAlchemy URL; a relative sqlite path is relative to the config file.",
    )
    audit_retention_days: int = Field(
        180, ge=1, description="audit-log entries older than this are deleted at each run"
    )
    results_retention_days: int = Field(
        7,
        ge=1,
        description="a run's persisted task results (its directory read) are deleted at its "
        "end unless a retry could help; kept ones once untouched for this many days",
    )


class Config(_Model):
    source: LdapSource
    targets: Annotated[list[TargetConfig], Field(min_length=1)]
    state: StateConfig = StateConfig()
    sso: SsoConfig | None = Field(
        None, description="The SAML identity provider for the targets with an sso block."
    )

    @model_validator(mode="after")
    def _group_scope_needs_groups(self) -> Config:
        for t in self.targets:
            if t.scope is not None and t.scope.groups and self.source.groups is None:
                raise ValueError(
                    f"targets[{t.name}].scope narrows groups, but the source has no groups section"
                )
        return self

    @model_validator(mode="after")
    def _grace_within_retention(self) -> Config:
        for t in self.targets:
            days = t.delete_disabled_after_days
            if days is not None and days >= self.state.audit_retention_days:
                raise ValueError(
                    f"targets[{t.name}].delete_disabled_after_days ({days}) must be below "
                    f"state.audit_retention_days ({self.state.audit_retention_days}): the audit "
                    "log says when a user was disabled"
                )
        return self

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, value: list[TargetConfig]) -> list[TargetConfig]:
        names = [t.name for t in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"target names must be unique: {', '.join(duplicates)}")
        return value

    def target(self, name: str | None) -> list[TargetConfig]:
        """The targets to work on: all of them, or the one named."""
        if name is None:
            return list(self.targets)
        for target in self.targets:
            if target.name == name:
                return [target]
        known = ", ".join(t.name for t in self.targets)
        raise ConfigError(f"no target named {name!r} in the config (known: {known})")


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the key path and what is expected."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in err["loc"])
        loc = loc.replace(".[", "[")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/configuration.md)"
        lines.append(f"{loc or '(top level)'}: {msg}")
    return "; ".join(lines)


def parse_config(data: Any, base_dir: Path | None = None) -> Config:
    """Validate a config document; raise :class:`ConfigError` with every problem named."""
    if not isinstance(data, dict):
        raise ConfigError("the config file must hold a mapping with 'source' and 'targets'")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # not chained: pydantic's own message repeats the input values (an inline secret)
        raise ConfigError(f"invalid config: {format_validation_error(exc)}") from None
    if base_dir is not None:
        config = _relative_to(config, base_dir)
    return config


def _relative_to(config: Config, base_dir: Path) -> Config:
    """Resolve relative file paths in the config against the config file's folder."""
    source = config.source
    if source.ca_file is not None and not source.ca_file.is_absolute():
        source = source.model_copy(update={"ca_file": base_dir / source.ca_file})
    targets = [
        t.model_copy(update={"ca_file": base_dir / t.ca_file})
        if t.ca_file is not None and not t.ca_file.is_absolute()
        else t
        for t in config.targets
    ]
    targets = [
        t.model_copy(
            update={
                "sso": t.sso.model_copy(
                    update={"sp_metadata": str(base_dir / (t.sso.sp_metadata or ""))}
                )
            }
        )
        if t.sso is not None
        and t.sso.sp_metadata is not None
        and not t.sso.metadata_url()
        and not Path(t.sso.sp_metadata).is_absolute()
        else t
        for t in targets
    ]
    sso = config.sso
    if sso is not None:
        files = ("signing_key", "signing_cert", "tls_cert", "tls_key")
        sso = sso.model_copy(
            update={
                key: base_dir / getattr(sso, key)
                for key in files
                if getattr(sso, key) is not None and not getattr(sso, key).is_absolute()
            }
        )
    state = config.state
    match = re.match(r"^sqlite:///(?!/)(.+)$", state.url)
    if match:
        state = state.model_copy(
            update={"url": f"sqlite:///{(base_dir / match.group(1)).resolve()}"}
        )
    return config.model_copy(
        update={"source": source, "targets": targets, "state": state, "sso": sso}
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # not chained: the parser's message is already in ours
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_config(data, base_dir=path.resolve().parent)

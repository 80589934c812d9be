"""The SCIM server of the demo and the tests: a real scim2-server, configured from the environment.

gunicorn serves ``tests.support.scim_app:create_app()``;
:class:`tests.support.servers.ScimServer` starts it. The options come in
JSON from the ``SCIM_APP_OPTIONS`` environment variable:

- ``bearer_tokens``: the tokens accepted as ``Authorization: Bearer``;
- ``basic``: ``[user, password]`` accepted as ``Authorization: Basic``;
- ``patch_supported`` (true by default): when false, the service provider
  configuration says so, and scim2-server answers PATCH with 501;
- ``user_extensions``: ``[{"urn": ..., "attributes": [...]}]``, extra schema
  extensions of the User resource type, of single-valued string attributes;
- ``filter_supported`` (true by default): when false, the service provider configuration
  says filters are not supported (scim2-server then refuses filtered queries);
- ``cursor_pagination``: announce and serve RFC 9865 cursors (``cursor``/``nextCursor``)
  besides ``startIndex``/``count``;
- ``jwt``: ``{"jwks_file", "issuer", "audience"}``: accept bearer JWTs signed by a key of
  that JWK set (``tests/support/oauth_app.py`` issues them) with that issuer and audience,
  not expired;
- ``storage_file``: keep the resources in that SQLite file
  (:class:`tests.support.scim_sqlite.SqliteStorage`, which lists a million users in linear
  time) instead of in memory (the default, an empty ``InMemoryStorage``).

Without credentials options, every request is accepted.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from scim2_models import (
    AuthenticationScheme,
    External,
    Filter,
    Pagination,
    Patch,
    Reference,
    ResourceType,
    Schema,
    SchemaExtension,
    ScimProvider,
    ServiceProviderConfig,
    UnauthorizedException,
)
from scim2_server.applications.wsgi import WSGIApplication
from scim2_server.memory import InMemoryStorage
from scim2_server.requests import ScimRequest
from scim2_server.service import ScimService
from scim2_server.storage import ScimStorage
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

from tests.support.scim_sqlite import SqliteStorage

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from _typeshed.wsgi import WSGIApplication as WSGICallable

OPTIONS_VARIABLE = "SCIM_APP_OPTIONS"
SCIM_PREFIX = "/v2"
TEST_PREFIX = "/_test/"
REPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

BASIC_SCHEME = AuthenticationScheme(
    type=AuthenticationScheme.Type.httpbasic,
    name="http_basic",
    description="HTTP Basic authentication",
    spec_uri=Reference[External]("https://datatracker.ietf.org/doc/html/rfc7617"),
)


@dataclass(frozen=True)
class AppOptions:
    """The options of the application, as ``SCIM_APP_OPTIONS`` holds them."""

    bearer_tokens: list[str] = field(default_factory=list)
    basic: tuple[str, str] | None = None
    patch_supported: bool = True
    user_extensions: list[dict[str, Any]] = field(default_factory=list)
    jwt: dict[str, str] | None = None
    cursor_pagination: bool = False
    filter_supported: bool = True
    storage_file: str | None = None

    @classmethod
    def from_environment(cls) -> AppOptions:
        """Read the options from ``SCIM_APP_OPTIONS``; raise ValueError on an unknown option."""
        raw: dict[str, Any] = json.loads(os.environ.get(OPTIONS_VARIABLE) or "{}")
        unknown = set(raw) - {option.name for option in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {OPTIONS_VARIABLE} options: {sorted(unknown)}")
        basic = raw.get("basic")
        return cls(
            bearer_tokens=list(raw.get("bearer_tokens") or []),
            basic=(str(basic[0]), str(basic[1])) if basic else None,
            patch_supported=bool(raw.get("patch_supported", True)),
            user_extensions=list(raw.get("user_extensions") or []),
            jwt=raw.get("jwt"),
            cursor_pagination=bool(raw.get("cursor_pagination", False)),
            filter_supported=bool(raw.get("filter_supported", True)),
            storage_file=str(raw["storage_file"]) if raw.get("storage_file") else None,
        )


# -- Provider ----------------------------------------------------------------


def extension_schema(urn: str, attributes: Iterable[str]) -> Schema:
    """Return a schema extension of single-valued, read-write string attributes."""
    return Schema.model_validate(
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": urn,
            "name": urn.rsplit(":", 1)[-1],
            "description": f"Test extension {urn}",
            "attributes": [
                {
                    "name": name,
                    "type": "string",
                    "multiValued": False,
                    "required": False,
                    "caseExact": False,
                    "mutability": "readWrite",
                    "returned": "default",
                    "uniqueness": "none",
                }
                for name in attributes
            ],
        }
    )


def resource_types_with(user_extension_urns: list[str]) -> list[ResourceType]:
    """Return the default resource types, the User one with more optional extensions."""
    resource_types = load_default_resource_types()
    user = resource_types["User"]
    user.schema_extensions = [
        *(user.schema_extensions or []),
        *(
            SchemaExtension.model_validate({"schema": urn, "required": False})
            for urn in user_extension_urns
        ),
    ]
    return list(resource_types.values())


def service_provider_config(options: AppOptions) -> ServiceProviderConfig:
    """Return scim2-server's default configuration, with the options' PATCH support and schemes."""
    config = load_default_service_provider_config()
    config.patch = Patch(supported=options.patch_supported)
    if not options.filter_supported:
        config.filter = Filter(supported=False)
    if options.cursor_pagination:
        config.pagination = Pagination(
            cursor=True, index=True, default_pagination_method="index", cursor_timeout=3600
        )
    schemes = [
        *([BEARER_TOKEN_SCHEME] if options.bearer_tokens or options.jwt else []),
        *([BASIC_SCHEME] if options.basic else []),
    ]
    if schemes:
        config.authentication_schemes = schemes
    return config


def build_provider(options: AppOptions) -> ScimProvider:
    """Describe the service: the default schemas and resource types, plus the User extensions."""
    extensions = [
        extension_schema(extension["urn"], extension["attributes"])
        for extension in options.user_extensions
    ]
    return ScimProvider.from_discovery(
        [*load_default_schemas().values(), *extensions],
        resource_types_with([extension["urn"] for extension in options.user_extensions]),
        config=service_provider_config(options),
    )


# -- Authentication ----------------------------------------------------------


def basic_credentials_match(credentials: str, expected: tuple[str, str]) -> bool:
    """Tell whether the credentials of a Basic Authorization header are the expected ones."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(decoded.encode(), ":".join(expected).encode())


class JwtVerifier:
    """Accepts JWT access tokens signed by a key of a JWK set, for one issuer and audience."""

    def __init__(self, jwks_file: str, issuer: str, audience: str) -> None:
        self.keys = KeySet.import_key_set(json.loads(Path(jwks_file).read_text()))
        self.claims = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
        )

    def accepts(self, token: str) -> bool:
        try:
            self.claims.validate(jwt.decode(token, self.keys).claims)
        except JoseError:
            return False
        return True


class CredentialsApplication(WSGIApplication):
    """scim2-server's WSGI application, refusing requests without accepted credentials.

    It accepts a bearer token of ``bearer_tokens``, a valid JWT (``jwt``), or the ``basic``
    user and password; it accepts every request when none is given.
    """

    def __init__(
        self,
        storage: ScimStorage,
        provider: ScimProvider,
        *,
        bearer_tokens: Iterable[str] = (),
        basic: tuple[str, str] | None = None,
        jwt_verifier: JwtVerifier | None = None,
    ) -> None:
        super().__init__(storage, provider, ScimService(provider, secret=secrets.token_hex(16)))
        self.bearer_tokens = frozenset(bearer_tokens)
        self.basic = basic
        self.jwt_verifier = jwt_verifier

    def check_auth(self, request: ScimRequest) -> None:
        """Refuse a request without accepted credentials."""
        if not self.bearer_tokens and self.basic is None and self.jwt_verifier is None:
            return
        scheme, _, credentials = (request.header("Authorization") or "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and credentials in self.bearer_tokens:
            return
        if scheme == "bearer" and self.jwt_verifier and self.jwt_verifier.accepts(credentials):
            return
        if scheme == "basic" and self.basic and basic_credentials_match(credentials, self.basic):
            return
        raise UnauthorizedException


# -- Test instrumentation ----------------------------------------------------


def send_json(start_response: StartResponse, status: HTTPStatus, body: Any) -> list[bytes]:
    """Send a JSON response."""
    payload = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    start_response(f"{status.value} {status.phrase}", headers)
    return [payload]


class RequestStatsMiddleware:
    """Test instrumentation around the real scim2-server application, not part of SCIM.

    It counts the requests under /v2 per HTTP method, thread-safely, and
    passes them on unchanged. It serves, without authentication:

    - ``GET /_test/stats``: the counts, such as ``{"GET": 3, "POST": 1, ...}``;
    - ``POST /_test/reset-stats``: reset the counts;
    - ``POST /_test/wipe``: delete every resource of the storage, and reset the counts.
    """

    def __init__(self, application: WSGICallable, storage: InMemoryStorage | SqliteStorage) -> None:
        self.application = application
        self.storage = storage
        self.lock = Lock()
        self.counts: Counter[str] = Counter()
        self.endpoints: dict[tuple[str, str], Callable[[], Any]] = {
            ("GET", "/_test/stats"): self.stats,
            ("POST", "/_test/reset-stats"): self.reset_stats,
            ("POST", "/_test/wipe"): self.wipe,
        }

    def stats(self) -> dict[str, int]:
        """Return the counts, every usual SCIM method included."""
        with self.lock:
            return {**dict.fromkeys(REPORTED_METHODS, 0), **self.counts}

    def reset_stats(self) -> dict[str, int]:
        """Reset the counts, and return them."""
        with self.lock:
            self.counts.clear()
        return self.stats()

    def wipe(self) -> dict[str, int]:
        """Delete every user and group, reset the counts, and return them."""
        if isinstance(self.storage, SqliteStorage):
            self.storage.wipe()
        else:
            with self.storage.lock:
                self.storage.resources = []
        return self.reset_stats()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve a /_test endpoint, or count a SCIM request and pass it on."""
        method = environ["REQUEST_METHOD"].upper()
        path = environ.get("PATH_INFO", "")
        if path.startswith(TEST_PREFIX):
            endpoint = self.endpoints.get((method, path))
            if endpoint is None:
                return send_json(
                    start_response, HTTPStatus.NOT_FOUND, {"detail": "no such test endpoint"}
                )
            return send_json(start_response, HTTPStatus.OK, endpoint())
        if path == SCIM_PREFIX or path.startswith(f"{SCIM_PREFIX}/"):
            with self.lock:
                self.counts[method] += 1
        return self.application(environ, start_response)


def create_app() -> WSGICallable:
    """Build the instrumented SCIM application of ``SCIM_APP_OPTIONS``, over an empty storage
    (in memory), or over the resources of ``storage_file``."""
    options = AppOptions.from_environment()
    provider = build_provider(options)
    storage: InMemoryStorage | SqliteStorage = (
        SqliteStorage(options.storage_file, provider) if options.storage_file else InMemoryStorage()
    )
    application = CredentialsApplication(
        storage,
        provider,
        bearer_tokens=options.bearer_tokens,
        basic=options.basic,
        jwt_verifier=JwtVerifier(**options.jwt) if options.jwt else None,
    )
    return RequestStatsMiddleware(application, storage)

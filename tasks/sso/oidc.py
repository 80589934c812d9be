"""OpenID Connect on authlib's authorization server: the authorization code flow with PKCE
(S256, required of every client), discovery, JWKS, userinfo; the only module that imports
authlib's server side.

The ``sub`` of the ID token and of userinfo is the value the provisioner wrote to that
application (its ``name_id`` setting: the userName or the externalId), so the application links
the sign-in to that very account. Codes live 60 s and are used once; tokens are kept in memory
with the person and application they were issued for, and userinfo asks the admission rule
again (a person deprovisioned since gets 401).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authlib.oauth2 import AuthorizationServer, OAuth2Error
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey
from requests.structures import CaseInsensitiveDict

CODE_SECONDS = 60
TOKEN_SECONDS = 600
SCOPES = ("openid", "profile", "email")


@dataclass(frozen=True, slots=True)
class OidcClient:
    """An application signing in with OIDC (authlib's ``ClientMixin``)."""

    app: str
    label: str
    client_id: str
    secret: str | None
    redirect_uris: tuple[str, ...]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.secret is not None and hmac.compare_digest(client_secret, self.secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return True
        allowed = ("client_secret_basic", "client_secret_post") if self.secret else ("none",)
        return method in allowed

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a code or token was issued for: the person, the application, the claims."""

    source_id: str
    login: str
    app: str
    sub: str
    claims: Mapping[str, Any]
    auth_time: int

    def get_user_id(self) -> str:
        return self.sub


@dataclass(slots=True)
class _Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    user: Subject
    expires: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.user.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["pwd"]


class WebRequest(OAuth2Request):  # type: ignore[misc,unused-ignore]
    """An HTTP request as authlib reads it, from plain values (any web framework)."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        args: dict[str, str],
        form: dict[str, str],
    ) -> None:
        # authlib reads "Authorization" as written; frameworks lower-case header names
        super().__init__(method=method, uri=uri, headers=CaseInsensitiveDict(dict(headers)))
        self._args = args
        self._form = form
        self.payload = BasicOAuth2Payload({**args, **form})

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send back: status, JSON or redirect, headers."""

    status: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)


class OpenIdProvider(AuthorizationServer):  # type: ignore[misc,unused-ignore]
    """authlib's authorization server with the code grant, PKCE and OpenID Connect."""

    def __init__(
        self,
        issuer: str,
        key_file: Path,
        clients: list[OidcClient],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.issuer = issuer
        self.clients = {c.client_id: c for c in clients}
        self.clock = clock
        self.key = RSAKey.import_key(
            key_file.read_bytes(), parameters={"use": "sig", "alg": "RS256"}
        )
        self.key_id = self.key.thumbprint()
        self._codes: dict[str, _Code] = {}
        self._tokens: dict[str, tuple[Subject, float]] = {}
        self._lock = threading.Lock()
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                lambda *_, **__: secrets.token_urlsafe(32), None, lambda *_, **__: TOKEN_SECONDS
            ),
        )
        provider = self

        class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc,unused-ignore]
            TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")

            def save_authorization_code(self, code: str, request: Any) -> None:
                data = request.payload.data
                with provider._lock:
                    provider._codes[code] = _Code(
                        code,
                        request.client.get_client_id(),
                        data.get("redirect_uri") or request.client.get_default_redirect_uri(),
                        request.client.get_allowed_scope(data.get("scope", "")),
                        data.get("nonce"),
                        data.get("code_challenge"),
                        data.get("code_challenge_method"),
                        request.user,
                        provider.clock() + CODE_SECONDS,
                    )

            def query_authorization_code(self, code: str, client: OidcClient) -> _Code | None:
                with provider._lock:
                    found = provider._codes.get(code)
                if found is None or found.client_id != client.client_id:
                    return None
                return found if found.expires > provider.clock() else None

            def delete_authorization_code(self, authorization_code: _Code) -> None:
                with provider._lock:
                    provider._codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: _Code) -> Subject:
                return authorization_code.user

        class IdToken(OpenIDCode):  # type: ignore[misc,unused-ignore]
            def exists_nonce(self, nonce: str, request: Any) -> bool:
                with provider._lock:
                    return any(c.nonce == nonce for c in provider._codes.values())

            def resolve_client_private_key(self, client: OidcClient) -> RSAKey:
                return provider.key

            def get_client_algorithm(self, client: OidcClient) -> str:
                return "RS256"

            def get_client_claims(self, client: OidcClient) -> dict[str, Any]:
                now = int(provider.clock())
                return {
                    "iss": provider.issuer,
                    "aud": [client.client_id],
                    "iat": now,
                    "exp": now + 300,
                }

            def get_encode_header(self, client: OidcClient) -> dict[str, str]:
                return {"alg": "RS256", "kid": provider.key_id}

            def generate_user_info(self, user: Subject, scope: str) -> UserInfo:
                return provider.user_info(user)

        self.register_grant(CodeGrant, [CodeChallenge(required=True), IdToken(require_nonce=False)])

    # -- authlib's hooks ---------------------------------------------------------------

    def query_client(self, client_id: str) -> OidcClient | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        with self._lock:
            now = self.clock()
            for old, (_, expires) in list(self._tokens.items()):
                if expires <= now:
                    del self._tokens[old]
            self._tokens[token["access_token"]] = (request.user, now + TOKEN_SECONDS)

    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def create_json_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Answer:
        return Answer(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    # -- what the web side calls ------------------------------------------------------

    def check_authorization(self, request: WebRequest) -> OidcClient:
        """Validate an authorization request before anyone signs in (client, redirect URI,
        response type, scope, PKCE S256 required); ``OAuth2Error`` names what is wrong."""
        data = request.payload.data
        if data.get("code_challenge_method") != "S256" or not data.get("code_challenge"):
            from authlib.oauth2.rfc6749.errors import InvalidRequestError

            raise InvalidRequestError("PKCE is required: code_challenge with method S256")
        if "openid" not in (data.get("scope") or "").split():
            from authlib.oauth2.rfc6749.errors import InvalidScopeError

            raise InvalidScopeError("the scope must include openid")
        grant = self.get_consent_grant(request)
        return grant.client  # type: ignore[no-any-return,unused-ignore]

    def authorize(self, request: WebRequest, subject: Subject) -> Answer:
        """The redirect to the client with a code for ``subject``."""
        grant = self.get_consent_grant(request, end_user=subject)
        return self.create_authorization_response(request, grant_user=subject, grant=grant)  # type: ignore[no-any-return,unused-ignore]

    def token(self, request: WebRequest) -> Answer:
        return self.create_token_response(request)  # type: ignore[no-any-return,unused-ignore]

    def bearer(self, access_token: str) -> Subject | None:
        """The subject of a live access token."""
        with self._lock:
            found = self._tokens.get(access_token)
        if found is None or found[1] <= self.clock():
            return None
        return found[0]

    def user_info(self, subject: Subject) -> UserInfo:
        return UserInfo(sub=subject.sub, **dict(subject.claims))

    def discovery(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/oidc/authorize",
            "token_endpoint": f"{base}/oidc/token",
            "userinfo_endpoint": f"{base}/oidc/userinfo",
            "jwks_uri": f"{base}/oidc/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": list(SCOPES),
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce"],
        }

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        public["kid"] = self.key_id
        return {"keys": [public]}


__all__ = ["Answer", "OAuth2Error", "OidcClient", "OpenIdProvider", "Subject", "WebRequest"]

"""OAuth 2 client credentials (RFC 6749 §4.4) for SCIM targets, with authlib.

The access token is fetched on first use, cached until shortly before it expires, and fetched
again once when the target answers 401 to it. The client secret and the tokens never leave
this object: errors name the token endpoint and the OAuth error code only.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import ClassVar

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError

from tasks.config import AuthConfig
from tasks.errors import FatalError, TransientError

MAX_MARGIN = 30.0
"""Seconds before expiry at which a cached token is replaced (at most; 10 % of short ones)."""


class ClientCredentials:
    """Hands out ``Authorization`` header values for one client; safe for several threads.

    Use :meth:`shared`: one instance per client and secret in the process, so every run and
    task of a worker uses the same cached token.
    """

    _shared: ClassVar[dict[tuple[str, ...], ClientCredentials]] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, auth: AuthConfig, verify: bool | str = True) -> ClientCredentials:
        assert auth.client_secret is not None
        secret = auth.client_secret.resolve().get_secret_value()
        key = (
            str(auth.token_url),
            str(auth.client_id),
            hashlib.sha256(secret.encode()).hexdigest(),
            " ".join(auth.scopes),
            auth.client_auth,
            auth.header_type,
            str(verify),
        )
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls(auth, verify)
            return cls._shared[key]

    def __init__(self, auth: AuthConfig, verify: bool | str = True) -> None:
        assert auth.token_url and auth.client_id and auth.client_secret
        self.token_url = auth.token_url
        method = "client_secret_basic" if auth.client_auth == "header" else "client_secret_post"
        self._oauth = OAuth2Session(
            auth.client_id,
            auth.client_secret.resolve().get_secret_value(),
            scope=" ".join(auth.scopes) or None,
            token_endpoint_auth_method=method,
        )
        self._oauth.verify = verify
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.fetched = 0
        self.header_type = auth.header_type

    def authorization(self) -> str:
        """``Bearer <token>`` (or the configured header type), fetching a token when there is
        none or it is about to expire."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._fetch()
            return f"{self.header_type} {self._token}"

    def refused(self, authorization: str) -> None:
        """The target answered 401 to this header value: drop the token if it is still ours."""
        with self._lock:
            if authorization == f"{self.header_type} {self._token}":
                self._token = None

    def _fetch(self) -> None:
        try:
            token = self._oauth.fetch_token(self.token_url, grant_type="client_credentials")
        except OAuthError as exc:
            raise FatalError(
                f"OAuth token request to {self.token_url} refused: {exc.error}"
                + (f": {exc.description}" if exc.description else "")
            ) from exc
        except requests.RequestException as exc:
            raise TransientError(
                f"OAuth token endpoint {self.token_url} unreachable ({type(exc).__name__})"
            ) from exc
        access_token = token.get("access_token")
        if not access_token:
            raise FatalError(f"OAuth token endpoint {self.token_url} answered no access_token")
        lifetime = float(token.get("expires_in") or 3600)
        self._token = str(access_token)
        self._renew_at = time.monotonic() + lifetime - min(MAX_MARGIN, lifetime / 10)
        self.fetched += 1

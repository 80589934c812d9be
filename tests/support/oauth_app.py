"""A real OAuth 2 authorization server for the demo and the tests: client credentials, JWTs.

Built on authlib's Flask integration (RFC 6749 client credentials grant, RFC 9068 JWT access
tokens signed RS256). It takes the client credentials in the Authorization header
(``client_secret_basic``) or in the body (``client_secret_post``). Options come from the
environment variable ``OAUTH_APP_OPTIONS`` (JSON):

- ``clients``: ``[{"client_id", "client_secret", "scope"}]``;
- ``issuer`` and ``audience`` of the tokens, ``token_lifetime`` in seconds;
- ``key_file``: a private RSA JWK (JSON) to sign with; its public half is served at
  ``/jwks.json`` and is what a resource server (``tests/support/scim_app.py``) verifies with.

``GET /_test/stats`` (test instrumentation) says how many tokens were issued.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, jsonify
from joserfc.jwk import KeySet, RSAKey

AUTH_METHODS = ("client_secret_basic", "client_secret_post")


class Client(ClientMixin):
    """A registered client allowed the client credentials grant only."""

    def __init__(self, client_id: str, client_secret: str, scope: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return ""

    def get_allowed_scope(self, scope: str) -> str:
        allowed = set(self.scope.split())
        return " ".join(s for s in (scope or self.scope).split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return client_secret == self.client_secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(AUTH_METHODS)


def create_app() -> Flask:
    options: dict[str, Any] = json.loads(os.environ.get("OAUTH_APP_OPTIONS", "{}"))
    clients = {
        c["client_id"]: Client(c["client_id"], c["client_secret"], c.get("scope", ""))
        for c in options.get("clients", [])
    }
    private = RSAKey.import_key(json.loads(Path(options["key_file"]).read_text()))
    issued = {"tokens": 0}
    lock = threading.Lock()

    class TokenGenerator(JWTBearerTokenGenerator):
        def get_jwks(self) -> KeySet:
            return KeySet([private])

        def get_audiences(self, client: Client, user: Any, scope: str) -> str:
            return str(options.get("audience", "scim"))

    def save_token(token: dict[str, Any], request: Any) -> None:
        with lock:
            issued["tokens"] += 1

    app = Flask(__name__)
    server = AuthorizationServer(app, query_client=clients.get, save_token=save_token)
    server.register_grant(ClientCredentialsGrant)
    server.register_token_generator(
        "client_credentials",
        TokenGenerator(
            issuer=options.get("issuer", "http://127.0.0.1"),
            expires_generator=int(options.get("token_lifetime", 3600)),
        ),
    )

    @app.post("/oauth/token")
    def token() -> Any:
        return server.create_token_response()

    @app.get("/jwks.json")
    def jwks() -> Any:
        return jsonify(KeySet([private]).as_dict(private=False))

    @app.get("/_test/stats")
    def stats() -> Any:
        return jsonify(issued)

    return app

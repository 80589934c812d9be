"""An OpenID Connect relying party on requests-oauthlib (oauthlib: independent of authlib,
which the provider uses) and PyJWT, as an application that takes the provisioner's sign-in.

Served by gunicorn (:class:`tests.support.servers.OidcRpServer`), configured by JSON in
``OIDC_RP_APP_OPTIONS``: ``base_url``, ``issuer`` (discovery read at start), ``client_id``,
``client_secret`` (none: a public client).

- ``GET /login`` starts the code flow with PKCE (S256) and a nonce;
- ``GET /callback`` exchanges the code (with the verifier), verifies the ID token (signature
  by the provider's JWKS, issuer, audience, expiry, nonce), reads userinfo, and shows ``sub``;
- ``GET /_test/last`` the last callback's outcome as JSON.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import jwt
import requests
from flask import Flask, jsonify, redirect, request, session
from requests_oauthlib import OAuth2Session


def create_app() -> Flask:
    options = json.loads(os.environ["OIDC_RP_APP_OPTIONS"])
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # the test lab is http on 127.0.0.1
    issuer = options["issuer"]
    discovery = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
    keys = jwt.PyJWKClient(discovery["jwks_uri"])
    client_id = options["client_id"]
    redirect_uri = f"{options['base_url']}/callback"
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)
    last: dict[str, Any] = {}

    def oauth(state: str | None = None) -> OAuth2Session:
        return OAuth2Session(
            client_id,
            redirect_uri=redirect_uri,
            scope=["openid", "email"],
            state=state,
            pkce="S256",
        )

    @app.get("/login")
    def login() -> Any:
        flow = oauth()
        nonce = secrets.token_urlsafe(16)
        url, state = flow.authorization_url(discovery["authorization_endpoint"], nonce=nonce)
        session.update(state=state, nonce=nonce, verifier=flow._code_verifier)
        return redirect(url)

    @app.get("/callback")
    def callback() -> Any:
        last.clear()
        if "error" in request.args:
            last.update(error=request.args["error"])
            return f"<h1>Refused</h1><p id=error>{request.args['error']}</p>", 403
        flow = oauth(session.get("state"))
        flow._code_verifier = session.get("verifier")
        token = flow.fetch_token(
            discovery["token_endpoint"],
            authorization_response=request.url,
            client_secret=options.get("client_secret"),
            include_client_id=options.get("client_secret") is None,
        )
        key = keys.get_signing_key_from_jwt(token["id_token"])
        claims = jwt.decode(
            token["id_token"],
            key.key,
            algorithms=["RS256"],
            audience=client_id,
            issuer=issuer,
        )
        if claims.get("nonce") != session.get("nonce"):
            last.update(error="nonce mismatch")
            return "<h1>nonce mismatch</h1>", 403
        userinfo = flow.get(discovery["userinfo_endpoint"], timeout=10).json()
        last.update(claims=claims, userinfo=userinfo, access_token=token["access_token"])
        return (
            "<h1>Signed in to the OIDC test application</h1>"
            f"<p>sub: <b id=sub>{claims['sub']}</b></p>"
            f"<p>userinfo: <span id=userinfo>{json.dumps(userinfo)}</span></p>"
        )

    @app.get("/_test/last")
    def outcome() -> Any:
        return jsonify(last)

    @app.get("/")
    def home() -> Any:
        return "<p>OIDC test application</p>"

    return app

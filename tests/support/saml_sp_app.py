"""A SAML 2.0 service provider on python3-saml (OneLogin's toolkit: independent of pysaml2,
which the IdP uses), as an application that takes the provisioner's sign-in would be.

Served by gunicorn (:class:`tests.support.servers.SamlSpServer`), configured by JSON in
``SAML_SP_APP_OPTIONS``: ``base_url`` (its own URL), ``idp_metadata_url`` (read once at
start, as an administrator would paste it), ``sign_requests`` with ``key_file``/``cert_file``.

- ``GET /login`` starts an SP-initiated sign-in (AuthnRequest, HTTP-Redirect binding);
- ``POST /acs`` validates the Response strictly (signatures, audience, recipient, times,
  InResponseTo of the request this browser started) and shows who signed in, or the errors;
- ``GET /metadata`` its metadata; ``GET /_test/last`` the last ACS outcome as JSON.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from flask import Flask, jsonify, redirect, request, session
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.settings import OneLogin_Saml2_Settings

POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"


def sp_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The SP half of python3-saml's settings (enough for its metadata)."""
    base = options["base_url"]
    sp: dict[str, Any] = {
        "entityId": f"{base}/metadata",
        "assertionConsumerService": {"url": f"{base}/acs", "binding": POST},
        "NameIDFormat": "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
    }
    signing = bool(options.get("sign_requests"))
    if signing:
        with open(options["cert_file"]) as cert, open(options["key_file"]) as key:
            sp["x509cert"] = cert.read()
            sp["privateKey"] = key.read()
    return {
        "strict": True,
        "debug": False,
        "sp": sp,
        "security": {
            "authnRequestsSigned": signing,
            "wantAssertionsSigned": True,
            "wantMessagesSigned": True,
            "rejectDeprecatedAlgorithm": True,
            "wantAttributeStatement": False,
            "signatureAlgorithm": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            "digestAlgorithm": "http://www.w3.org/2001/04/xmlenc#sha256",
        },
    }


def sp_metadata(options: dict[str, Any]) -> str:
    """The SP's metadata XML, as its administrator hands it to the IdP."""
    metadata = OneLogin_Saml2_Settings(sp_settings(options), sp_validation_only=True)
    text = metadata.get_sp_metadata()
    return text.decode() if isinstance(text, bytes) else str(text)


def create_app() -> Flask:
    options = json.loads(os.environ["SAML_SP_APP_OPTIONS"])
    idp = OneLogin_Saml2_IdPMetadataParser.parse_remote(options["idp_metadata_url"])
    own = sp_settings(options)
    settings = OneLogin_Saml2_IdPMetadataParser.merge_settings(own, idp)
    settings["security"] = {**settings.get("security", {}), **own["security"]}  # ours rule
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)
    last: dict[str, Any] = {}

    def request_data() -> dict[str, Any]:
        return {
            "https": "off",
            "http_host": request.host,
            "script_name": request.path,
            "get_data": request.args.copy(),
            "post_data": request.form.copy(),
        }

    @app.get("/login")
    def login() -> Any:
        auth = OneLogin_Saml2_Auth(request_data(), settings)
        url = auth.login(return_to=request.args.get("return_to", "/"))
        session["request_id"] = auth.get_last_request_id()
        return redirect(url)

    @app.post("/acs")
    def acs() -> Any:
        auth = OneLogin_Saml2_Auth(request_data(), settings)
        expected = session.pop("request_id", None)
        auth.process_response(request_id=expected)
        errors = auth.get_errors()
        in_response_to = auth.get_last_response_in_response_to() if not errors else None
        last.clear()
        last.update(
            {
                "errors": errors,
                "reason": auth.get_last_error_reason(),
                "name_id": auth.get_nameid() if not errors else None,
                "attributes": auth.get_attributes() if not errors else {},
                "in_response_to": in_response_to,
                "expected": expected,
            }
        )
        if errors or not auth.is_authenticated():
            return f"<h1>SP refused the response</h1><p id=errors>{errors}</p>", 403
        session["name_id"] = auth.get_nameid()
        return (
            "<h1>Signed in to the test application</h1>"
            f"<p>NameID: <b id=name-id>{auth.get_nameid()}</b></p>"
            f"<p>Attributes: <span id=attributes>{json.dumps(auth.get_attributes())}</span></p>"
        )

    @app.get("/")
    def home() -> Any:
        return f"<p>Signed in as <b id=name-id>{session.get('name_id', '')}</b></p>"

    @app.get("/metadata")
    def metadata() -> Any:
        return sp_metadata(options), 200, {"Content-Type": "application/samlmetadata+xml"}

    @app.get("/_test/last")
    def outcome() -> Any:
        return jsonify(last)

    return app

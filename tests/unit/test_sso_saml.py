"""The IdP's SAML side in one process: pysaml2 (with xmlsec1) answering AuthnRequests made by
python3-saml, an independent implementation, whose strict validation judges the answers.
Requests the IdP must refuse: an unknown SP, an ACS URL the SP's metadata does not list, a
replay, an unsigned request where signatures are required."""

from __future__ import annotations

import base64
import re
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from onelogin.saml2.auth import OneLogin_Saml2_Auth

from tasks.errors import ConfigError
from tasks.sso.keys import ensure_signing_pair
from tasks.sso.saml import (
    IdentityProvider,
    RequestRefused,
    ServiceProvider,
    post_form,
    sp_entity_id,
)
from tests.support.saml_sp_app import sp_metadata, sp_settings

IDP = "http://127.0.0.1:9000"
SP = {"base_url": "http://127.0.0.1:9100"}
UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> IdentityProvider:
    keys = tmp_path_factory.mktemp("idp")
    ensure_signing_pair(keys / "idp.key", keys / "idp.crt", IDP)
    metadata = sp_metadata(SP)
    entity, signs = sp_entity_id(metadata, "test")
    assert not signs
    sp = ServiceProvider("app", "App", entity, metadata, False, UNSPECIFIED)
    return identity_provider(keys / "idp.key", keys / "idp.crt", sp)


def identity_provider(key: Path, cert: Path, sp: ServiceProvider) -> IdentityProvider:
    """The IdP at ``IDP`` with this key and one application."""
    return IdentityProvider(
        entity_id=f"{IDP}/metadata",
        base_url=IDP,
        key_file=str(key),
        cert_file=str(cert),
        sps=[sp],
        assertion_minutes=5,
    )


def settings(idp: IdentityProvider, **sp: Any) -> dict[str, Any]:
    found = re.search(r"X509Certificate>([^<]+)<", idp.metadata())
    assert found
    document = sp_settings(SP)
    document["sp"].update(sp)
    document["idp"] = {
        "entityId": idp.entity_id,
        "singleSignOnService": {
            "url": f"{IDP}/sso/redirect",
            "binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect",
        },
        "x509cert": found[1],
    }
    return document


def request_data(url: str, post: dict[str, str] | None = None) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "https": "off",
        "http_host": parts.netloc,
        "script_name": parts.path,
        "get_data": {},
        "post_data": post or {},
    }


def authn_request(document: dict[str, Any]) -> tuple[dict[str, str], str]:
    auth = OneLogin_Saml2_Auth(request_data(f"{SP['base_url']}/login"), document)
    query = dict(parse_qsl(urlsplit(auth.login(return_to="/home")).query))
    return query, str(auth.get_last_request_id())


def test_an_answer_passes_the_independent_sp_s_strict_validation(idp: IdentityProvider) -> None:
    document = settings(idp)
    query, request_id = authn_request(document)
    request = idp.parse_request("redirect", query)
    assert request.id == request_id and request.relay_state == "/home"
    form = idp.response_form(request.sp, "ada.l", {"email": ["ada@example.org"]}, request=request)
    response = re.search(r'name="SAMLResponse" value="([^"]+)"', form)
    assert response and 'name="RelayState" value="/home"' in form
    acs = OneLogin_Saml2_Auth(
        request_data(f"{SP['base_url']}/acs", {"SAMLResponse": response[1]}), document
    )
    acs.process_response(request_id=request_id)
    assert acs.get_errors() == [], acs.get_last_error_reason()
    assert acs.get_nameid() == "ada.l"
    assert acs.get_attributes() == {"email": ["ada@example.org"]}  # under the configured name


def test_an_answer_to_another_request_is_refused_by_the_sp(idp: IdentityProvider) -> None:
    document = settings(idp)
    query, _ = authn_request(document)
    request = idp.parse_request("redirect", query)
    form = idp.response_form(request.sp, "ada.l", {}, request=request)
    response = re.search(r'name="SAMLResponse" value="([^"]+)"', form)
    assert response
    acs = OneLogin_Saml2_Auth(
        request_data(f"{SP['base_url']}/acs", {"SAMLResponse": response[1]}), document
    )
    acs.process_response(request_id="ONELOGIN_another_request")
    assert acs.get_errors(), "the InResponseTo must bind the answer to its request"


def test_a_replayed_request_is_refused(idp: IdentityProvider) -> None:
    query, _ = authn_request(settings(idp))
    idp.parse_request("redirect", query)
    with pytest.raises(RequestRefused, match="already used"):
        idp.parse_request("redirect", query)


def test_a_request_for_an_acs_the_metadata_does_not_list_is_refused(
    idp: IdentityProvider,
) -> None:
    evil = {
        "url": "https://evil.example/acs",
        "binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST",
    }
    query, _ = authn_request(settings(idp, assertionConsumerService=evil))
    with pytest.raises(RequestRefused, match=r"ACS URL https://evil\.example/acs is not in App"):
        idp.parse_request("redirect", query)


def test_a_request_from_an_unknown_sp_is_refused(idp: IdentityProvider) -> None:
    query, _ = authn_request(settings(idp, entityId="https://stranger.example/metadata"))
    with pytest.raises(RequestRefused, match="not configured here"):
        idp.parse_request("redirect", query)


def test_garbage_is_refused_with_a_reason(idp: IdentityProvider) -> None:
    with pytest.raises(RequestRefused, match="not deflated"):
        idp.parse_request("redirect", {"SAMLRequest": "bm90IHNhbWw="})
    with pytest.raises(RequestRefused, match=r"not valid SAML|signature is missing or wrong"):
        idp.parse_request("post", {"SAMLRequest": "bm90IHNhbWw="})
    with pytest.raises(RequestRefused, match="no SAMLRequest"):
        idp.parse_request("post", {})


def test_an_unsolicited_answer_goes_to_the_metadata_s_acs(idp: IdentityProvider) -> None:
    sp = next(iter(idp.sps.values()))
    form = idp.response_form(sp, "ada.l", {})
    assert f'action="{SP["base_url"]}/acs"' in form
    assert "InResponseTo" not in form  # (base64 inside; checked by the SP below)
    response = re.search(r'name="SAMLResponse" value="([^"]+)"', form)
    assert response
    acs = OneLogin_Saml2_Auth(
        request_data(f"{SP['base_url']}/acs", {"SAMLResponse": response[1]}), settings(idp)
    )
    acs.process_response()
    assert acs.get_errors() == [] and acs.get_nameid() == "ada.l"


def test_the_metadata_names_the_endpoints_and_the_certificate(
    idp: IdentityProvider, tmp_path: Path
) -> None:
    metadata = idp.metadata()
    assert f'entityID="{IDP}/metadata"' in metadata
    assert f'Location="{IDP}/sso/redirect"' in metadata and f'Location="{IDP}/sso/post"' in metadata
    assert "X509Certificate" in metadata and "PRIVATE" not in metadata


def deflated(xml: bytes) -> str:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(packer.compress(xml) + packer.flush()).decode()


def test_a_decompression_bomb_is_refused_unexpanded(idp: IdentityProvider) -> None:
    bomb = deflated(b"<a>" + b" " * 50_000_000 + b"</a>")  # 50 MB of XML in ~50 KB
    assert len(bomb) < 400_000
    with pytest.raises(RequestRefused, match="too big"):
        idp.parse_request("redirect", {"SAMLRequest": bomb})
    with pytest.raises(RequestRefused, match="too big"):
        idp.parse_request("post", {"SAMLRequest": bomb})


def test_a_request_issued_long_ago_is_refused(idp: IdentityProvider) -> None:
    query, _ = authn_request(settings(idp))
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"]), -15)
    old = re.sub(rb'IssueInstant="[^"]+"', b'IssueInstant="2020-01-01T00:00:00Z"', xml)
    with pytest.raises(RequestRefused, match="outside the accepted"):
        idp.parse_request("redirect", {**query, "SAMLRequest": deflated(old)})


def test_an_acs_url_that_could_leave_its_html_attribute_is_refused_at_start(
    tmp_path: Path,
) -> None:
    ensure_signing_pair(tmp_path / "k", tmp_path / "c", IDP)
    good = sp_metadata({"base_url": "https://app.example"})
    evil = good.replace(
        'Location="https://app.example/acs"',
        'Location="https://app.example/x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"',
    )
    assert evil != good
    entity, _ = sp_entity_id(evil, "test")
    sp = ServiceProvider("evil", "Evil", entity, evil, False, UNSPECIFIED)
    with pytest.raises(ConfigError, match=r"targets\[evil\].sso.sp_metadata: the ACS URL"):
        identity_provider(tmp_path / "k", tmp_path / "c", sp)


def test_the_posting_form_escapes_every_value() -> None:
    page = post_form('https://a.example/acs?x="><b>', "SAMLResponse", "<x/>", '"><i>')
    assert "<b>" not in page and "<i>" not in page
    assert 'action="https://a.example/acs?x=&quot;&gt;&lt;b&gt;"' in page

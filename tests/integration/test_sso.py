"""Browser sign-in through the provisioner's SAML 2.0 identity provider, end to end.

Real parts: slapd (the directory, with passwords), scim2-server (the application's SCIM
side, provisioned by ``scim-provisioner sync``), ``scim-provisioner sso serve`` (pysaml2 +
xmlsec1) as its own process, and a service provider on python3-saml (an independent SAML
implementation) that validates every Response strictly and signs its AuthnRequests; headless
Chromium plays the person.

- SP-initiated: the SP's NameID is the userName the provisioner wrote to the target;
- IdP-initiated: the launcher lists the application; one click signs in;
- a disabled person (locked in the directory) and a deprovisioned one (left the filter, so
  disabled on the target) get a refusal page; a wrong password is refused; every sign-in
  and refusal is in the audit log;
- replayed and altered requests are refused; the assertion is signed (RSA-SHA256) and bound
  to its SP, ACS, request and a short lifetime; password attempts are throttled.

Screenshots go to tests/output/sso/ (the ones in docs/sso.md come from here).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
import yaml

from deployments.processes import REPO_ROOT, free_port
from tasks.state.store import AuditQuery, StateStore
from tests.conftest import LDAP_PASSWORD, ScimServers, person, sample_people, target_users
from tests.conftest import write_config as write_sync_config
from tests.support.browser import BrowserMissing, chromium
from tests.support.browser import screenshot as save_screenshot
from tests.support.browser import wait_for as browser_wait_for
from tests.support.saml_sp_app import sp_metadata, sp_settings
from tests.support.servers import OidcRpServer, SamlSpServer, Slapd, SsoServer

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect")]

OUTPUT = REPO_ROOT / "tests" / "output" / "sso"
PASSWORDS = {"ada": "ada-pass-1815", "bob": "bob-pass-1822", "dee": "dee-pass-77", "eve": "eve-9"}
LABEL = "Test App"
RP_ID = "test-rp"
RP_SECRET = "rp-secret-4f1e"


@dataclass
class Site:
    config: Path
    directory: Slapd
    scim: Any
    idp: SsoServer
    sp: SamlSpServer
    rp: OidcRpServer
    sp2: dict[str, Any]
    """A second application's SAML settings (unsigned requests; driven in-process)."""


def set_passwords(directory: Slapd) -> None:
    directory.modify(
        "".join(
            f"dn: {person(uid)}\nchangetype: modify\nreplace: userPassword\n"
            f"userPassword: {password}\n\n"
            for uid, password in PASSWORDS.items()
        )
    )


def run_cli(*args: str) -> tuple[int, str]:
    """``scim-provisioner ARGS`` in this process (Prefect's test server), with its output."""
    from flows.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def site(
    slapd: Slapd, scim_servers: ScimServers, tmp_path_factory: pytest.TempPathFactory, prefect: None
) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("sso")
    slapd.reload(sample_people())
    set_passwords(slapd)
    scim = scim_servers.get("sso")
    idp_port = free_port()
    idp_url = f"http://127.0.0.1:{idp_port}"
    sp = SamlSpServer(workdir / "sp", idp_metadata_url=f"{idp_url}/metadata", sign_requests=True)
    metadata = workdir / "sp-metadata.xml"
    metadata.write_text(sp.metadata())
    rp = OidcRpServer(workdir / "rp", issuer=idp_url, client_id=RP_ID, client_secret=RP_SECRET)
    sp2 = {"base_url": f"http://127.0.0.1:{free_port()}"}
    (workdir / "sp2-metadata.xml").write_text(sp_metadata(sp2))
    config = write_sync_config(workdir / "config.yaml", slapd, scim, use_bulk="never")
    document = yaml.safe_load(config.read_text())
    # a second application on the same SCIM server (its accounts adopted by userName)
    second = {**document["targets"][0], "name": "app2"}
    second["sso"] = {"sp_metadata": "sp2-metadata.xml", "label": "Second App"}
    document["targets"].append(second)
    document["targets"][0]["sso"] = {
        "sp_metadata": "sp-metadata.xml",  # relative to the config file
        "label": LABEL,
        "attributes": {"email": "mail", "displayName": "cn"},
        "oidc": {
            "client_id": RP_ID,
            "client_secret": {"env": "TEST_RP_SECRET"},
            "redirect_uris": [rp.redirect_uri],
        },
    }
    document["sso"] = {
        "base_url": idp_url,
        "throttle": {"failures_per_user": 3, "failures_per_address": 8},
    }
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    env = {"TEST_LDAP_PASSWORD": LDAP_PASSWORD, "TEST_RP_SECRET": RP_SECRET}
    os.environ["TEST_LDAP_PASSWORD"] = LDAP_PASSWORD
    code, out = run_cli("sync", "--config", str(config), "--json")
    assert code == 0, out
    idp = SsoServer(workdir / "idp", config, idp_port, env)
    idp.start()
    try:
        sp.start()
        rp.start()
        try:
            yield Site(config, slapd, scim, idp, sp, rp, sp2)
        finally:
            rp.stop()
            sp.stop()
    finally:
        idp.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    try:
        with chromium(OUTPUT) as driver:
            driver.set_window_size(960, 620)  # the screenshots in docs/sso.md
            yield driver
    except BrowserMissing as exc:
        pytest.fail(str(exc))


def wait_for(driver: WebDriver, name: str, *texts: str) -> str:
    try:
        return browser_wait_for(driver, OUTPUT, name, *texts)
    except AssertionError as exc:
        pytest.fail(str(exc))


def sign_in(driver: WebDriver, login: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "login").send_keys(login)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()


def fresh(driver: WebDriver, site: Site) -> None:
    """Forget every cookie (the IdP's and the SP's share the host 127.0.0.1)."""
    driver.get(f"{site.sp.base_url}/metadata")
    driver.delete_all_cookies()


def audit(site: Site, **query: Any) -> list[Any]:
    config = yaml.safe_load(site.config.read_text())
    store = StateStore(config["state"]["url"], read_only=True)
    try:
        return store.audit_rows(AuditQuery(**query))
    finally:
        store.close()


def test_sp_initiated_sign_in_asserts_the_user_name_the_provisioner_wrote(
    site: Site, browser: WebDriver
) -> None:
    fresh(browser, site)
    browser.get(f"{site.sp.base_url}/login")
    wait_for(browser, "login", "Sign in", f"Sign in to {LABEL} with your directory account")
    assert urlsplit(browser.current_url).port == site.idp.port
    save_screenshot(browser, OUTPUT, "sso-login")
    sign_in(browser, "ada", PASSWORDS["ada"])
    page = wait_for(browser, "sp-signed-in", "Signed in to the test application", "NameID: ada")
    save_screenshot(browser, OUTPUT, "sso-sp-signed-in")
    provisioned = target_users(site.scim)["ada"]
    assert provisioned["userName"] == "ada"  # the account the provisioner created
    outcome = site.sp.last()
    assert outcome["errors"] == [] and outcome["name_id"] == provisioned["userName"]
    assert outcome["in_response_to"] == outcome["expected"]  # an answer to this request
    assert outcome["attributes"]["email"] == ["ada@example.org", "countess@example.org"]
    assert outcome["attributes"]["displayName"] == ["Ada Lovelace"]
    assert "ada@example.org" in page
    rows = audit(site, target="app", action="sso", who="ada")
    assert rows and rows[0].outcome == "ok" and "SP-initiated: NameID ada" in rows[0].cause
    assert rows[0].scim_id == provisioned["id"]


def test_idp_initiated_from_the_launcher(site: Site, browser: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{site.idp.base_url}/")  # still signed in at the IdP
    wait_for(browser, "launcher", "Your applications", "Signed in as ada", LABEL)
    save_screenshot(browser, OUTPUT, "sso-launcher")
    browser.find_element(By.ID, "launch-app").click()
    wait_for(browser, "idp-initiated", "Signed in to the test application", "NameID: ada")
    outcome = site.sp.last()
    assert outcome["errors"] == [] and outcome["in_response_to"] is None  # unsolicited
    rows = audit(site, target="app", action="sso", who="ada")
    assert "IdP-initiated: NameID ada" in rows[0].cause


def test_oidc_code_flow_with_pkce_gives_the_provisioned_user_name_as_sub(
    site: Site, browser: WebDriver
) -> None:
    fresh(browser, site)
    browser.get(f"{site.rp.base_url}/login")
    wait_for(browser, "oidc-login", f"Sign in to {LABEL} with your directory account")
    sign_in(browser, "ada", PASSWORDS["ada"])
    wait_for(browser, "oidc-signed-in", "Signed in to the OIDC test application", "sub: ada")
    save_screenshot(browser, OUTPUT, "sso-oidc-signed-in")
    outcome = site.rp.last()  # the RP verified signature, issuer, audience, expiry, nonce
    claims = outcome["claims"]
    assert claims["sub"] == target_users(site.scim)["ada"]["userName"]
    assert claims["iss"] == site.idp.base_url and claims["aud"] in (RP_ID, [RP_ID])
    assert outcome["userinfo"]["sub"] == "ada"
    assert outcome["userinfo"]["email"] == ["ada@example.org", "countess@example.org"]
    rows = audit(site, target="app", action="sso", who="ada")
    assert rows[0].outcome == "ok" and rows[0].cause == "OIDC: sub ada"


def submit_login(
    site: Site,
    http: requests.Session,
    form: requests.Response,
    login: str,
    password: str,
    *,
    held: bool,
) -> requests.Response:
    """Fill in the IdP's sign-in page ``form`` and post it (not following redirects): its
    form token, the request it holds (``held``: one must be there, else none), the login and
    the password."""
    token = re.search(r"name=form_token value='([^']+)'", form.text)
    key = re.search(r"name=request value='([^']*)'", form.text)
    assert token and key and bool(key[1]) == held, form.text[:2000]
    return http.post(
        f"{site.idp.base_url}/login",
        data={"form_token": token[1], "request": key[1], "login": login, "password": password},
        allow_redirects=False,
        timeout=30,
    )


def oidc_code(
    site: Site, http: requests.Session, login: str, verifier: str, **extra: str
) -> requests.Response:
    """Sign ``login`` in and ask for a code (requests, no browser); the last answer."""
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    query = {
        "response_type": "code",
        "client_id": RP_ID,
        "redirect_uri": site.rp.redirect_uri,
        "scope": "openid email",
        "state": "s-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    answer = http.get(
        f"{site.idp.base_url}/oidc/authorize", params=query, allow_redirects=False, timeout=10
    )
    if answer.status_code != 303:
        return answer
    form = http.get(f"{site.idp.base_url}{answer.headers['Location']}", timeout=10)
    return submit_login(site, http, form, login, PASSWORDS[login], held=True)


def exchange(site: Site, code: str, verifier: str) -> requests.Response:
    return requests.post(
        f"{site.idp.base_url}/oidc/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": site.rp.redirect_uri,
            "code_verifier": verifier,
        },
        auth=(RP_ID, RP_SECRET),
        timeout=10,
    )


def test_oidc_refuses_requests_without_pkce_or_with_an_unregistered_redirect(site: Site) -> None:
    http = requests.Session()
    verifier = "v" * 50
    no_pkce = oidc_code(site, http, "ada", verifier, code_challenge="", code_challenge_method="")
    assert no_pkce.status_code == 400 and "PKCE is required" in no_pkce.text
    evil = oidc_code(site, http, "ada", verifier, redirect_uri="https://evil.example/cb")
    assert evil.status_code == 400 and "Location" not in evil.headers  # never redirected there
    granted = oidc_code(site, http, "ada", verifier)
    assert granted.status_code == 302, granted.text
    location = granted.headers["Location"]
    assert location.startswith(site.rp.redirect_uri) and "state=s-1" in location
    code = dict(parse_qsl(urlsplit(location).query))["code"]
    wrong = exchange(site, code, "w" * 50)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    granted = oidc_code(site, http, "ada", verifier)
    code = dict(parse_qsl(urlsplit(granted.headers["Location"]).query))["code"]
    first = exchange(site, code, verifier)
    assert first.status_code == 200 and "id_token" in first.json(), first.text
    again = exchange(site, code, verifier)  # a code is used once
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_wrong_password_is_refused_and_audited(site: Site, browser: WebDriver) -> None:
    fresh(browser, site)
    browser.get(f"{site.sp.base_url}/login")
    wait_for(browser, "login-again", "Sign in")
    sign_in(browser, "ada", "not-her-password")
    wait_for(browser, "wrong-password", "Wrong login or password.")
    save_screenshot(browser, OUTPUT, "sso-wrong-password")
    rows = audit(site, target="(sso)", action="sign-in", who="ada")
    assert rows[0].outcome == "refused" and rows[0].cause.startswith("wrong password")
    assert "not-her-password" not in site.idp.log()  # never logged
    assert not [r for r in audit(site, limit=1000) if "not-her-password" in r.cause]


def test_disabled_and_deprovisioned_people_are_refused(site: Site, browser: WebDriver) -> None:
    verifier = "b" * 50
    granted = oidc_code(site, requests.Session(), "bob", verifier)
    code = dict(parse_qsl(urlsplit(granted.headers["Location"]).query))["code"]
    bobs_token = exchange(site, code, verifier).json()["access_token"]
    userinfo = f"{site.idp.base_url}/oidc/userinfo"
    bearer = {"Authorization": f"Bearer {bobs_token}"}
    assert requests.get(userinfo, headers=bearer, timeout=10).json()["sub"] == "bob"
    # dee is locked in the directory; bob becomes a contractor (out of the users filter)
    site.directory.modify(
        f"dn: {person('dee')}\nchangetype: modify\nadd: objectClass\n"
        "objectClass: nsAccountLockable\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n\n"
        f"dn: {person('bob')}\nchangetype: modify\nreplace: employeeType\n"
        "employeeType: contractor\n\n"
    )
    code, out = run_cli("sync", "--config", str(site.config), "--json")
    assert code == 0, out
    users = target_users(site.scim)
    assert users["dee"]["active"] is False and users["bob"]["active"] is False
    # a token issued before is worth nothing now: userinfo asks the state store again
    assert requests.get(userinfo, headers=bearer, timeout=10).status_code == 401

    for login, reason in (
        ("dee", "your directory account is disabled"),
        ("bob", f"your account in {LABEL} is disabled"),
    ):
        fresh(browser, site)
        browser.get(f"{site.sp.base_url}/login")
        wait_for(browser, f"login-{login}", "Sign in")
        sign_in(browser, login, PASSWORDS[login])
        wait_for(
            browser,
            f"refused-{login}",
            "Sign-in refused",
            f"You cannot sign in to {LABEL}: {reason}.",
        )
        if login == "bob":
            save_screenshot(browser, OUTPUT, "sso-refused")
        assert site.sp.last().get("name_id") in (None, "ada")  # nothing reached the SP for them
        rows = audit(site, target="app", action="sso", who=login)
        assert rows[0].outcome == "refused" and reason in rows[0].cause
        browser.get(f"{site.idp.base_url}/")  # signed in at the IdP, but no application
        wait_for(browser, f"launcher-{login}", "You have no applications to sign in to.")
        browser.get(f"{site.rp.base_url}/login")  # nor by OIDC
        wait_for(browser, f"oidc-refused-{login}", f"You cannot sign in to {LABEL}: {reason}.")


def saml_request_url(site: Site) -> str:
    """The IdP URL the SP redirects a browser to (a signed AuthnRequest)."""
    answer = requests.get(f"{site.sp.base_url}/login", allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    return str(answer.headers["Location"])


def xml_of(fields: dict[str, str]) -> bytes:
    """The AuthnRequest XML of a redirect binding's query fields."""
    return zlib.decompress(base64.b64decode(fields["SAMLRequest"]), -15)


def to_post_endpoint(xml: bytes) -> bytes:
    """The request as destined for the POST binding's endpoint."""
    return xml.replace(b"/sso/redirect", b"/sso/post")


def test_replayed_and_altered_requests_are_refused(site: Site) -> None:
    url = saml_request_url(site)
    first = requests.get(url, allow_redirects=False, timeout=10)
    assert first.status_code == 303 and first.headers["Location"].startswith("/login?request=")
    replay = requests.get(url, allow_redirects=False, timeout=10)
    assert replay.status_code == 400 and "already used" in replay.text

    base, query = url.split("?", 1)
    fields = dict(parse_qsl(query))
    altered = {**fields, "RelayState": "https://elsewhere.example/"}
    answer = requests.get(f"{base}?{urlencode(altered)}", allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "signature is missing or wrong" in answer.text
    unsigned = {k: v for k, v in fields.items() if k not in ("Signature", "SigAlg")}
    answer = requests.get(f"{base}?{urlencode(unsigned)}", allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "signature is missing or wrong" in answer.text
    # the POST binding: the same request, unsigned in the form, is refused as well
    answer = requests.post(
        f"{site.idp.base_url}/sso/post",
        data={"SAMLRequest": base64.b64encode(to_post_endpoint(xml_of(fields))).decode()},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 400 and "signature is missing or wrong" in answer.text
    # an AuthnRequest naming an ACS the SP's metadata does not list
    xml = xml_of(fields).decode()
    assert f'AssertionConsumerServiceURL="{site.sp.base_url}/acs"' in xml
    rows = audit(site, target="(sso)", action="sso", outcome="refused")
    assert any("already used" in r.cause for r in rows)
    assert any("signature" in r.cause for r in rows)


def sp2_settings(site: Site) -> dict[str, Any]:
    """The second application's python3-saml settings, with the IdP's from its metadata."""
    from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser

    idp = OneLogin_Saml2_IdPMetadataParser.parse_remote(f"{site.idp.base_url}/metadata")
    return dict(OneLogin_Saml2_IdPMetadataParser.merge_settings(sp_settings(site.sp2), idp))


def sp2_login_url(site: Site, **login: Any) -> tuple[str, str]:
    """An AuthnRequest of the second application (redirect binding): its URL and id."""
    from onelogin.saml2.auth import OneLogin_Saml2_Auth

    host = urlsplit(site.sp2["base_url"]).netloc
    data = {"https": "off", "http_host": host, "script_name": "/login", "get_data": {}}
    auth = OneLogin_Saml2_Auth({**data, "post_data": {}}, sp2_settings(site))
    url = auth.login(**login)
    return url, str(auth.get_last_request_id())


def signed_in(site: Site, login: str) -> requests.Session:
    """A requests session signed in at the IdP (no application yet)."""
    http = requests.Session()
    form = http.get(f"{site.idp.base_url}/login", timeout=10)
    answer = submit_login(site, http, form, login, PASSWORDS[login], held=False)
    assert answer.status_code == 303 and "sso_session" in http.cookies
    return http


def posted_response(page: str) -> str:
    found = re.search(r'name="SAMLResponse" value="([^"]+)"', page)
    assert found, page[:500]
    return base64.b64decode(found[1]).decode()


def test_a_post_binding_request_is_answered_from_the_session_in_a_get(site: Site) -> None:
    from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
    from onelogin.saml2.settings import OneLogin_Saml2_Settings

    http = signed_in(site, "ada")
    request = OneLogin_Saml2_Authn_Request(OneLogin_Saml2_Settings(sp2_settings(site)))
    encoded = base64.b64encode(to_post_endpoint(request.get_xml().encode())).decode()
    # a cross-site POST carries no SameSite=Lax cookie: the IdP goes on in a GET, which does
    answer = http.post(
        f"{site.idp.base_url}/sso/post",
        data={"SAMLRequest": encoded, "RelayState": "/after"},
        cookies={},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/sso/continue?")
    form = http.get(f"{site.idp.base_url}{answer.headers['Location']}", timeout=30)
    assert form.status_code == 200, form.text
    assert f'action="{site.sp2["base_url"]}/acs"' in form.text
    assert 'name="RelayState" value="/after"' in form.text
    xml = posted_response(form.text)
    assert f'InResponseTo="{request.get_id()}"' in xml and ">ada<" in xml
    rows = audit(site, target="app2", action="sso", who="ada")
    assert rows[0].outcome == "ok" and "SP-initiated" in rows[0].cause


def test_force_authn_asks_again_and_is_passive_never_shows_a_page(site: Site) -> None:
    http = signed_in(site, "ada")
    url, _ = sp2_login_url(site, force_authn=True)
    answer = http.get(url, allow_redirects=False, timeout=10)
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/login?request=")
    url, request_id = sp2_login_url(site, is_passive=True)
    passive = requests.get(url, allow_redirects=False, timeout=10)  # nobody signed in
    assert passive.status_code == 200
    xml = posted_response(passive.text)
    assert "urn:oasis:names:tc:SAML:2.0:status:NoPassive" in xml
    assert f'InResponseTo="{request_id}"' in xml
    signed = http.get(sp2_login_url(site, is_passive=True)[0], timeout=30)  # with a session
    assert ">ada<" in posted_response(signed.text)


def test_the_assertion_is_signed_and_bound_to_its_sp_request_and_time(site: Site) -> None:
    http = requests.Session()
    url = saml_request_url(site)
    request_id = re.search(
        r'ID="([^"]+)"',
        zlib.decompress(
            base64.b64decode(dict(parse_qsl(urlsplit(url).query))["SAMLRequest"]), -15
        ).decode(),
    )
    assert request_id
    login = http.get(url, timeout=10)  # follows to the login form
    assert (
        "HttpOnly" in login.headers["set-cookie"] and "SameSite=lax" in login.headers["set-cookie"]
    )
    answer = submit_login(site, http, login, "ada", PASSWORDS["ada"], held=True)
    assert answer.status_code == 200, answer.text
    cookie = answer.headers["set-cookie"]
    assert "sso_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    encoded = re.search(r'name="SAMLResponse" value="([^"]+)"', answer.text)
    assert encoded
    xml = base64.b64decode(encoded[1]).decode()
    acs = f"{site.sp.base_url}/acs"
    assert f'InResponseTo="{request_id[1]}"' in xml
    assert f'Destination="{acs}"' in xml and f'Recipient="{acs}"' in xml
    assert re.search(rf"<\w+:Audience>{site.sp.base_url}/metadata</\w+:Audience>", xml)
    assert len(re.findall(r"<\w+:Signature[ >]", xml)) == 2  # the Response and the Assertion
    assert xml.count('Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"') == 2
    assert "sha1" not in xml
    not_after = re.search(r'SubjectConfirmationData[^>]*NotOnOrAfter="([^"]+)"', xml)
    assert not_after
    expires = datetime.fromisoformat(not_after[1].replace("Z", "+00:00"))
    assert datetime.now(UTC) < expires <= datetime.now(UTC) + timedelta(minutes=6)
    assert re.search(
        r'NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"[^>]*>ada<', xml
    )


def test_password_attempts_are_throttled_per_login_and_per_address(site: Site) -> None:
    http = requests.Session()

    def attempt(login: str, password: str) -> requests.Response:
        form = http.get(f"{site.idp.base_url}/login", timeout=10)
        return submit_login(site, http, form, login, password, held=False)

    failures_before = len(audit(site, target="(sso)", action="sign-in", outcome="refused"))
    for _ in range(3):
        assert attempt("eve", "guess").status_code == 401
    blocked = attempt("eve", PASSWORDS["eve"])  # the right password, too late
    assert blocked.status_code == 429 and "Too many failed attempts" in blocked.text
    # the address: 8 failures from 127.0.0.1 in the window block every login from it
    for index in range(8 - failures_before - 3):
        assert attempt(f"nobody{index}", "guess").status_code == 401
    assert attempt("ada", PASSWORDS["ada"]).status_code == 429
    rows = audit(site, target="(sso)", action="sign-in", who="ada")
    assert rows[0].outcome == "refused" and "too many failed attempts" in rows[0].cause
    assert json.dumps([r.as_dict() for r in rows])  # the audit rows serialise (CLI --json)

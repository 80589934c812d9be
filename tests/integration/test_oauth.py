"""OAuth 2 client credentials against a real authorization server (authlib, RS256 JWTs) and a
real scim2-server that verifies the tokens."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.config import TargetConfig
from tasks.scim.client import ScimClient
from tests.conftest import CUSTOM_URN, sync, write_config
from tests.support.servers import OAuthServer, ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

CLIENT_ID = "provisioner"
CLIENT_SECRET = "client-secret-3e9d71"


@pytest.fixture(scope="module")
def oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthServer]:
    server = OAuthServer(
        tmp_path_factory.mktemp("oauth"),
        clients=[{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": "scim"}],
        token_lifetime=4,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def protected_scim(
    tmp_path_factory: pytest.TempPathFactory, oauth: OAuthServer
) -> Iterator[ScimServer]:
    server = ScimServer(
        tmp_path_factory.mktemp("scim-jwt"),
        jwt=oauth.resource_server_options(),
        user_extensions=[{"urn": CUSTOM_URN, "attributes": ["costCenter"]}],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def scim_jwt(protected_scim: ScimServer) -> ScimServer:
    protected_scim.wipe()
    return protected_scim


def oauth_auth(oauth: OAuthServer, client_auth: str = "header") -> dict[str, Any]:
    return {
        "type": "oauth2_client_credentials",
        "token_url": oauth.token_url,
        "client_id": CLIENT_ID,
        "client_secret": {"env": "APP_CLIENT_SECRET"},
        "scopes": ["scim"],
        "client_auth": client_auth,
    }


@pytest.mark.parametrize("client_auth", ["header", "body"])
def test_sync_with_client_credentials(
    client_auth: str,
    tmp_path: Path,
    directory: Slapd,
    oauth: OAuthServer,
    scim_jwt: ScimServer,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A whole sync on one token (client auth in the header or the body); no secret logged."""
    monkeypatch.setenv("APP_CLIENT_SECRET", CLIENT_SECRET)
    config = write_config(
        tmp_path / "c.yaml", directory, scim_jwt, auth=oauth_auth(oauth, client_auth)
    )
    before = oauth.tokens_issued()
    caplog.set_level(logging.DEBUG)
    code, summary = sync(config, capsys)
    assert code == 0, summary["targets"][0]["failures"]
    assert summary["targets"][0]["succeeded"]["create"] == 3
    assert oauth.tokens_issued() - before == 1
    assert CLIENT_SECRET not in caplog.text and CLIENT_SECRET not in str(summary)


def test_expired_and_refused_tokens_are_replaced(
    oauth: OAuthServer, scim_jwt: ScimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token near its expiry is fetched again before use; a token the target refuses (401)
    is fetched again once and the request retried."""
    monkeypatch.setenv("APP_CLIENT_SECRET", CLIENT_SECRET)
    target = TargetConfig.model_validate(
        {"name": "t", "url": scim_jwt.base_url, "auth": oauth_auth(oauth)}
    )
    client = ScimClient(target)
    try:
        assert client.find("/Users", 'userName eq "x"') == []
        credentials = client.credentials
        assert credentials is not None
        fetched = credentials.fetched
        time.sleep(4.0)  # the 4 s token is past its renewal point
        assert client.find("/Users", 'userName eq "x"') == []
        assert credentials.fetched == fetched + 1
        credentials._token = "not-a-valid-token"  # as if the target had revoked it
        credentials._renew_at = float("inf")
        assert client.find("/Users", 'userName eq "x"') == []
        assert credentials.fetched == fetched + 2
        assert client.stats["GET"] == 4  # the refused one was retried once
    finally:
        client.close()


def test_wrong_client_secret_is_a_clear_error(
    tmp_path: Path,
    directory: Slapd,
    oauth: OAuthServer,
    scim_jwt: ScimServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_CLIENT_SECRET", "wrong-secret-0a7f")
    config = write_config(tmp_path / "c.yaml", directory, scim_jwt, auth=oauth_auth(oauth))
    code, err = sync(config, capsys)
    assert code == 2
    assert f"OAuth token request to {oauth.token_url} refused: invalid_client" in err
    assert "wrong-secret-0a7f" not in err
    assert scim_jwt.writes() == 0

"""The identity provider's decisions without a network: who gets into an application and as
whom, the password-attempt throttle, the sso config's safety checks, the signing key."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from tasks.config import load_config, parse_config
from tasks.errors import ConfigError
from tasks.ldap.extract import SourceUser
from tasks.sso.keys import ensure_signing_pair
from tasks.sso.policy import admit
from tasks.sso.throttle import Throttle
from tasks.state.store import StateRecord
from tests.unit.test_config import minimal

ADA = SourceUser("id-ada", "uid=ada,ou=people,dc=example,dc=org", {"uid": ["ada"]})


def record(status: str = "active", **payload: Any) -> StateRecord:
    body = {"userName": "ada.l", **payload}
    return StateRecord("id-ada", "scim-1", "ada.l", "h", body, status)  # type: ignore[arg-type]


def test_an_active_provisioned_person_gets_in_with_the_user_name_written_to_the_target() -> None:
    decision = admit("app", "App", ADA, record(), "userName")
    assert decision.admitted and decision.name_id == "ada.l" and decision.scim_id == "scim-1"


def test_the_name_id_can_carry_the_external_id_written_to_the_target() -> None:
    decision = admit("app", "App", ADA, record(externalId="ext-7"), "externalId")
    assert decision.admitted and decision.name_id == "ext-7"
    missing = admit("app", "App", ADA, record(), "externalId")
    assert not missing.admitted and "no externalId" in missing.reason


@pytest.mark.parametrize(
    ("person", "found", "reason"),
    [
        (ADA, None, "you have no account in App"),
        (ADA, record("disabled"), "your account in App is disabled"),
        (
            SourceUser("id-ada", ADA.dn, {}, disabled=True),
            record(),
            "your directory account is disabled",
        ),
    ],
)
def test_the_unprovisioned_the_deprovisioned_and_the_disabled_are_refused_with_the_reason(
    person: SourceUser, found: StateRecord | None, reason: str
) -> None:
    decision = admit("app", "App", person, found, "userName")
    assert not decision.admitted and decision.name_id is None and decision.reason == reason


def test_failed_passwords_block_the_login_then_the_address_until_the_window_passes() -> None:
    now = [1000.0]
    throttle = Throttle(3, 5, 60, lambda: now[0])
    for _ in range(3):
        assert throttle.attempt("Ada", "10.0.0.1") == 0  # counted until forgiven
    assert throttle.attempt("ada", "10.0.0.2") == 60  # the login, from anywhere, any case
    assert throttle.attempt("bob", "10.0.0.1") == 0  # the address is not full yet
    assert throttle.attempt("cy", "10.0.0.1") == 0
    assert throttle.attempt("dee", "10.0.0.1") == 60  # 5 failures from that address
    now[0] += 61
    assert throttle.attempt("ada", "10.0.0.1") == 0


def test_an_attempt_counts_from_its_start_until_the_right_password_forgives_it() -> None:
    throttle = Throttle(2, 3, 60, lambda: 0.0)
    assert throttle.attempt("ada", "a") == 0
    throttle.forgive("ada", "a")  # the right password: as if never tried
    assert throttle.attempt("ada", "a") == 0  # wrong: it stays counted
    assert throttle.attempt("\uff21\uff24\uff21", "b") == 0  # the same login (NFKC, any case)
    assert throttle.attempt("ada", "c") == 60  # two in flight already: refused at once
    assert throttle.attempt("bob", "a") == 0
    assert throttle.attempt("eve", "a") == 0
    assert throttle.attempt("fay", "a") == 60  # three counted from address a


def test_the_throttle_forgets_the_oldest_keys_past_its_size() -> None:
    throttle = Throttle(1, 1000, 60, lambda: 0.0, max_keys=10)
    for index in range(100):
        throttle.attempt(f"login{index}", "a")
    assert len(throttle._failures) <= 10


def with_sso(idp: dict[str, Any], **target: Any) -> dict[str, Any]:
    document = minimal(**target)
    document["sso"] = idp
    return document


def test_a_sign_in_page_over_plain_http_to_other_machines_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"sso.*passwords would travel unencrypted"):
        parse_config(with_sso({"base_url": "http://sso.example.com"}))
    config = parse_config(with_sso({"base_url": "http://127.0.0.1:9000"}))
    assert config.sso is not None and config.sso.port == 9000 and not config.sso.secure
    assert config.sso.entity_id == "http://127.0.0.1:9000/metadata"
    secure = parse_config(with_sso({"base_url": "https://sso.example.com"})).sso
    assert secure is not None and secure.secure and secure.port == 8443


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"sp_metadata": "http://app.example.com/md"}, "an https:// URL"),
        ({"sp_metadata": "md.xml", "attributes": {"email": "shout(mail)"}}, "attributes.email"),
        ({"sp_metadata": "md.xml", "surname": "x"}, "unknown key"),
        ({"label": "App"}, "give sp_metadata"),
        (
            {"oidc": {"client_id": "a", "redirect_uris": ["http://app.example.com/cb"]}},
            r"http://app.example.com/cb: an https:// URI",
        ),
        ({"oidc": {"client_id": "a", "redirect_uris": []}}, "redirect_uris"),
        (
            {"oidc": {"client_id": "a", "client_secret": "s3cret", "redirect_uris": ["https://a"]}},
            "secrets are not written in the config file",
        ),
    ],
)
def test_a_target_s_sso_block_is_checked(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(minimal(sso=block))


def test_a_name_id_from_an_external_id_the_mapping_never_writes_is_refused() -> None:
    mapping = {"userName": "uid"}
    with pytest.raises(ConfigError, match=r"sso\.name_id externalId: the mapping writes no"):
        parse_config(
            minimal(mapping=mapping, sso={"sp_metadata": "m.xml", "name_id": "externalId"})
        )


def test_sso_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    import yaml

    document = with_sso({"base_url": "https://sso.example.com"}, sso={"sp_metadata": "sp.xml"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    config = load_config(path)
    assert config.sso is not None and config.sso.signing_key == tmp_path / "sso/idp-signing.key"
    assert config.targets[0].sso is not None
    assert config.targets[0].sso.sp_metadata == str(tmp_path / "sp.xml")


def test_the_signing_pair_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    key, cert = tmp_path / "k" / "idp.key", tmp_path / "k" / "idp.crt"
    assert ensure_signing_pair(key, cert, "https://sso.example.com/metadata")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN CERTIFICATE" in cert.read_bytes()
    first = key.read_bytes()
    assert not ensure_signing_pair(key, cert, "x") and key.read_bytes() == first
    cert.unlink()
    with pytest.raises(ConfigError, match="exists but"):
        ensure_signing_pair(key, cert, "x")

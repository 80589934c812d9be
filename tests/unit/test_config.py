"""The config file: validated, with errors that name the bad key."""

from pathlib import Path

import pytest

from tasks.config import DEFAULT_USER_MAPPING, load_config, parse_config
from tasks.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "deployments" / "example-config.yaml"


def minimal(**target: object) -> dict:
    return {
        "source": {"url": "ldaps://ldap.example.org", "users": {"base_dn": "ou=people,dc=x"}},
        "targets": [{"name": "app", "url": "https://app.example.org/scim/v2", **target}],
    }


class TestDefaults:
    def test_openldap_defaults(self) -> None:
        """It uses entryUUID, no account status, and LDAPS for an ldaps:// URL."""
        config = parse_config(minimal())
        assert config.source.users.id_attribute == "entryUUID"
        assert config.source.account_status.method == "none"
        assert config.source.tls == "ldaps"

    def test_active_directory_defaults(self) -> None:
        """It uses objectGUID and userAccountControl for AD, and StartTLS for ldap://."""
        data = minimal()
        data["source"].update(type="active_directory", url="ldap://dc.example.org")
        config = parse_config(data)
        assert config.source.users.id_attribute == "objectGUID"
        assert config.source.account_status.method == "user_account_control"
        assert config.source.tls == "starttls"

    def test_target_switch_defaults(self) -> None:
        """Create, update and disable/delete are on; the remove action is disable."""
        target = parse_config(minimal()).targets[0]
        assert (target.create_users, target.update_users, target.deprovision_users) == (
            True,
            True,
            True,
        )
        assert target.remove_action == "disable"
        assert target.provision_disabled_users is False
        assert target.mapping["userName"] == DEFAULT_USER_MAPPING["userName"]
        assert target.mapping["emails"][0].type == "work"  # the default is validated too

    def test_max_user_bytes(self) -> None:
        """A target sends users of up to 1 MiB unless told otherwise; a tiny limit is refused."""
        assert parse_config(minimal()).targets[0].max_user_bytes == 1_048_576
        assert parse_config(minimal(max_user_bytes=4096)).targets[0].max_user_bytes == 4096
        with pytest.raises(ConfigError, match=r"targets\[0\]\.max_user_bytes: .*1024"):
            parse_config(minimal(max_user_bytes=10))


class TestErrors:
    def test_unknown_key_is_named(self) -> None:
        """A typo names the key path."""
        with pytest.raises(ConfigError, match=r"targets\[0\]\.remove_acton: unknown key"):
            parse_config(minimal(remove_acton="delete"))

    def test_bad_value_says_what_is_expected(self) -> None:
        """A bad enum value names the key and the allowed values."""
        with pytest.raises(
            ConfigError, match=r"targets\[0\]\.remove_action: .*'disable' or 'delete'"
        ):
            parse_config(minimal(remove_action="purge"))

    def test_inline_secret_is_refused(self) -> None:
        """A password written in the file is refused, pointing to env/prefect_secret."""
        data = minimal(auth={"type": "basic", "username": "u", "password": "hunter2"})
        with pytest.raises(ConfigError, match=r"auth\.password: secrets are not written") as err:
            parse_config(data)
        assert "hunter2" not in str(err.value)

    def test_missing_section(self) -> None:
        """A missing required section is named."""
        with pytest.raises(ConfigError, match=r"targets: Field required"):
            parse_config({"source": minimal()["source"]})

    def test_bad_filter(self) -> None:
        """A filter without parentheses is refused with an example."""
        data = minimal()
        data["source"]["users"]["filter"] = "uid=*"
        with pytest.raises(ConfigError, match=r"source\.users\.filter: .*parentheses"):
            parse_config(data)

    def test_unmapped_username(self) -> None:
        """A mapping without userName is refused."""
        with pytest.raises(ConfigError, match="userName must be mapped"):
            parse_config(minimal(mapping={"displayName": "cn"}))

    def test_duplicate_target_names(self) -> None:
        data = minimal()
        data["targets"].append(dict(data["targets"][0]))
        with pytest.raises(ConfigError, match="target names must be unique: app"):
            parse_config(data)

    def test_not_yaml(self, tmp_path: Path) -> None:
        path = tmp_path / "c.yaml"
        path.write_text("source: [unclosed")
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read config file"):
            load_config(tmp_path / "nope.yaml")

    def test_unknown_target(self) -> None:
        with pytest.raises(ConfigError, match="no target named 'x'"):
            parse_config(minimal()).target("x")


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret reference reads the environment only when resolved."""
    config = parse_config(minimal(auth={"type": "bearer", "token": {"env": "APP_TOKEN"}}))
    token = config.targets[0].auth.token
    assert token is not None
    with pytest.raises(ConfigError, match="APP_TOKEN"):
        token.resolve()
    monkeypatch.setenv("APP_TOKEN", "s3cret")
    assert token.resolve().get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    """A relative sqlite path and ca_file are relative to the config file's folder."""
    import yaml

    data = minimal()
    data["source"]["ca_file"] = "ca.pem"
    data["state"] = {"url": "sqlite:///state.db"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert config.source.ca_file == tmp_path / "ca.pem"
    assert config.state.url == f"sqlite:///{tmp_path / 'state.db'}"


def test_example_config_is_valid() -> None:
    """The example shipped with the project validates."""
    config = load_config(EXAMPLE)
    assert config.targets


def test_audit_since_takes_durations_and_dates() -> None:
    import argparse
    from datetime import UTC, datetime, timedelta

    from flows.cli import since

    assert abs(datetime.now(UTC) - timedelta(hours=24) - since("24h")) < timedelta(seconds=5)
    assert since("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert since("2026-11-01T10:00:00+01:00").utcoffset() == timedelta(hours=1)
    with pytest.raises(argparse.ArgumentTypeError, match="neither a duration"):
        since("yesterday")


class TestPlaintextCredentials:
    """Credentials never travel over plain http:// to another machine unless the config says
    the network is trusted."""

    def test_a_token_over_plain_http_to_another_host_is_refused_naming_the_url(self) -> None:
        auth = {"type": "bearer", "token": {"env": "T"}}
        with pytest.raises(ConfigError, match=r"targets\[0\].*unencrypted to http://app\.example"):
            parse_config(minimal(url="http://app.example.org/scim/v2", auth=auth))

    def test_an_oauth_token_endpoint_over_plain_http_is_refused(self) -> None:
        auth = {
            "type": "oauth2_client_credentials",
            "token_url": "http://login.example.org/token",
            "client_id": "c",
            "client_secret": {"env": "S"},
        }
        with pytest.raises(ConfigError, match=r"unencrypted to http://login\.example\.org/token"):
            parse_config(minimal(auth=auth))

    def test_allowed_when_asked_on_loopback_or_without_credentials(self) -> None:
        auth = {"type": "basic", "username": "u", "password": {"env": "P"}}
        parse_config(minimal(url="http://app.example.org/v2", auth=auth, allow_insecure_http=True))
        parse_config(minimal(url="http://127.0.0.1:8080/v2", auth=auth))
        parse_config(minimal(url="http://localhost:8080/v2", auth=auth))
        parse_config(minimal(url="http://app.example.org/v2"))


def test_a_relative_state_path_keeps_the_audit_retention(tmp_path: Path) -> None:
    """Resolving a relative SQLite path against the config's folder kept only the URL: 7 days
    of audit retention silently became 180."""
    data = minimal()
    data["state"] = {"url": "sqlite:///state.db", "audit_retention_days": 7}
    config = parse_config(data, base_dir=tmp_path)
    assert config.state.audit_retention_days == 7
    assert config.state.url == f"sqlite:///{tmp_path.resolve() / 'state.db'}"

"""SCIM 2.0 dialect: filter escaping, PATCH diffs, discovery."""

from tasks.scim.dialect import Capabilities, Scim20

ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def test_filter_value_is_escaped() -> None:
    """Quotes and backslashes cannot break out of the filter string."""
    f = Scim20().match_filter('userName eq "%s"', 'x" or userName pr or "\\')
    assert f == 'userName eq "x\\" or userName pr or \\"\\\\"'


def test_patch_replaces_changes_and_removes_what_left() -> None:
    old = {
        "schemas": ["c", ENT],
        "userName": "a",
        "title": "Dr",
        "name": {"givenName": "A", "familyName": "B"},
        ENT: {"department": "R&D", "employeeNumber": "1"},
        "emails": [{"value": "a@x"}],
        "active": True,
    }
    new = {
        "schemas": ["c"],
        "userName": "a",
        "name": {"givenName": "Ada"},
        "emails": [{"value": "a@x"}, {"value": "b@x"}],
        "active": True,
    }
    ops = Scim20().patch_operations(old, new)
    assert {"op": "remove", "path": "title"} in ops
    assert {"op": "remove", "path": "name.familyName"} in ops
    assert {"op": "remove", "path": f"{ENT}:department"} in ops
    assert {"op": "remove", "path": f"{ENT}:employeeNumber"} in ops
    assert {"op": "replace", "path": "name.givenName", "value": "Ada"} in ops
    assert {"op": "replace", "path": "emails", "value": [{"value": "a@x"}, {"value": "b@x"}]} in ops
    assert len(ops) == 6


def test_no_change_no_operation() -> None:
    p = {"userName": "a", "name": {"givenName": "A"}}
    assert Scim20().patch_operations(p, dict(p)) == []


def test_capabilities_assume_nothing() -> None:
    assert Capabilities.from_service_provider_config(None) == Capabilities()
    assert Capabilities.from_service_provider_config({"patch": {"supported": "yes"}}).patch is False
    caps = Capabilities.from_service_provider_config(
        {"patch": {"supported": True}, "filter": {"supported": True, "maxResults": 200}}
    )
    assert caps.patch and caps.filter and caps.filter_max_results == 200


class TestScim11:
    """SCIM 1.1 on the wire: URNs, partial-resource PATCH, member deletion."""

    def test_payload_urns_on_the_wire_and_back(self) -> None:
        from tasks.scim.dialect import CORE_11, ENTERPRISE_11, Scim11

        body = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENT],
            "userName": "a",
            ENT: {"department": "R"},
        }
        wire = Scim11().to_wire(body)
        assert wire == {
            "schemas": [CORE_11, ENTERPRISE_11],
            "userName": "a",
            ENTERPRISE_11: {"department": "R"},
        }
        assert Scim11().from_wire(wire)[ENT] == {"department": "R"}

    def test_patch_is_a_partial_resource(self) -> None:
        from tasks.scim.dialect import CORE_11, ENTERPRISE_11, Scim11

        dialect = Scim11()
        old = {
            "userName": "a",
            "title": "Dr",
            "emails": [{"value": "a@x"}],
            ENT: {"department": "R"},
        }
        new = {
            "userName": "a",
            "emails": [{"value": "b@x"}],
            "name": {"givenName": "A"},
            "active": False,
        }
        body = dialect.patch_body(dialect.patch_operations(old, new))
        assert body["schemas"] == [CORE_11]
        assert sorted(body["meta"]["attributes"]) == sorted(
            [f"{ENTERPRISE_11}:department", "emails", "title"]
        )
        assert body["emails"] == [{"value": "b@x"}]
        assert body["name"] == {"givenName": "A"}
        assert body["active"] is False

    def test_member_changes(self) -> None:
        from tasks.scim.dialect import Scim11

        dialect = Scim11()
        body = dialect.patch_body(dialect.member_operations(["n"], ["o"]))
        assert body["members"] == [{"value": "o", "operation": "delete"}, {"value": "n"}]
        assert "meta" not in body


class TestVendorProfiles:
    """Each vendor profile's payloads and limits."""

    def test_aws_keeps_one_value_per_multi_valued_attribute_and_100_members(self) -> None:
        from tasks.config import TargetConfig
        from tasks.scim.dialect import AwsIdentityCenter
        from tasks.sync.load_groups import max_members

        aws = AwsIdentityCenter()
        user = {
            "userName": "a",
            "emails": [{"value": "x@a", "type": "work"}, {"value": "y@a", "primary": True}],
        }
        assert aws.normalize_user(user)["emails"] == [{"value": "y@a", "primary": True}]
        caps = aws.adjust(Capabilities(patch=True, bulk_max_operations=1000))
        assert caps.bulk_max_operations is None
        target = TargetConfig(name="t", url="http://t/v2", dialect="aws")
        assert max_members(target, caps, aws) == 100

    def test_entra_patch_forms(self) -> None:
        from tasks.scim.dialect import EntraCompatible

        entra = EntraCompatible()
        disable = entra.patch_operations({"active": True}, {"active": False})
        body = entra.patch_body(disable + entra.member_operations(["n"], ["o"]))
        assert body["Operations"] == [
            {"op": "Replace", "path": "active", "value": "False"},
            {"op": "Remove", "path": "members", "value": [{"value": "o"}]},
            {"op": "Add", "path": "members", "value": [{"value": "n"}]},
        ]

    def test_slack_like_speaks_11_with_the_plural_discovery_path(self) -> None:
        from tasks.scim.dialect import dialect_for

        slack = dialect_for("1.1", "slack")
        assert slack.service_provider_config_paths[0] == "/ServiceProviderConfigs"
        assert slack.media_type == "application/json"

    def test_profile_and_version_must_fit(self) -> None:
        import pytest

        from tasks.config import parse_config
        from tasks.errors import ConfigError

        def config(**target: object) -> None:
            parse_config(
                {
                    "source": {"url": "ldap://x", "users": {"base_dn": "dc=x"}},
                    "targets": [{"name": "t", "url": "http://t/v2", **target}],
                }
            )

        with pytest.raises(ConfigError, match=r"dialect slack speaks SCIM 1\.1"):
            config(dialect="slack")
        with pytest.raises(ConfigError, match="filters allow only eq and and"):
            config(dialect="aws", user_match_filter='emails co "%s"')
        config(dialect="slack", scim_version="1.1")


def test_capabilities_read_pagination() -> None:
    caps = Capabilities.from_service_provider_config(
        {"pagination": {"cursor": True, "index": True, "maxPageSize": 200}}
    )
    assert caps.cursor and caps.max_page_size == 200
    assert Capabilities.from_service_provider_config({"pagination": "yes"}).cursor is False

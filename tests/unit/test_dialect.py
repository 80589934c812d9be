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

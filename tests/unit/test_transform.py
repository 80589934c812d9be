"""Directory entries become SCIM users by the mapping."""

import json

import pytest

from tasks.config import (
    CORE_USER_SCHEMA,
    DEFAULT_USER_MAPPING,
    ENTERPRISE_USER_SCHEMA,
    MultiValuedRule,
    parse_config,
)
from tasks.ldap.extract import SourceUser
from tasks.sync.transform import (
    build_user,
    content_hash,
    oversize_reason,
    payload_bytes,
    transform_batch,
)

MAPPING = (
    parse_config(
        {
            "source": {"url": "ldap://x", "users": {"base_dn": "dc=x"}},
            "targets": [
                {
                    "name": "t",
                    "url": "http://t/v2",
                    "mapping": {
                        **DEFAULT_USER_MAPPING,
                        "name": {
                            "givenName": "givenName",
                            "familyName": "sn",
                            "formatted": "{givenName} {sn}",
                        },
                        "urn:example:custom:2.0:User": {"costCenter": "employeeType"},
                        "nickName": "$dn",
                    },
                }
            ],
        }
    )
    .targets[0]
    .mapping
)


def user(**attributes: list[str]) -> SourceUser:
    return SourceUser(
        "id-1", "uid=ada,ou=people,dc=x", {k.lower(): v for k, v in attributes.items()}
    )


def test_core_enterprise_and_custom_attributes() -> None:
    """Core, enterprise and custom URN attributes are built, with extension schemas listed."""
    desired = build_user(
        user(
            uid=["ada"],
            cn=["Ada L"],
            givenName=["Ada"],
            sn=["Lovelace"],
            employeeNumber=["42"],
            departmentNumber=["R&D"],
            employeeType=["CC-7"],
        ),
        MAPPING,
    )
    p = desired.payload
    assert p["schemas"] == [CORE_USER_SCHEMA, "urn:example:custom:2.0:User", ENTERPRISE_USER_SCHEMA]
    assert p["userName"] == "ada"
    assert p["externalId"] == "id-1"
    assert p["name"] == {"givenName": "Ada", "familyName": "Lovelace", "formatted": "Ada Lovelace"}
    assert p[ENTERPRISE_USER_SCHEMA] == {"employeeNumber": "42", "department": "R&D"}
    assert p["urn:example:custom:2.0:User"] == {"costCenter": "CC-7"}
    assert p["nickName"] == "uid=ada,ou=people,dc=x"
    assert p["active"] is True


def test_multi_valued_attributes_keep_every_value() -> None:
    """Two mail values give two work emails, the first primary; phones keep their types."""
    p = build_user(
        user(uid=["ada"], mail=["a@x.org", "ada@x.org"], telephoneNumber=["1"], mobile=["2", "3"]),
        MAPPING,
    ).payload
    assert p["emails"] == [
        {"value": "a@x.org", "type": "work", "primary": True},
        {"value": "ada@x.org", "type": "work"},
    ]
    assert p["phoneNumbers"] == [
        {"value": "1", "type": "work"},
        {"value": "2", "type": "mobile"},
        {"value": "3", "type": "mobile"},
    ]


def test_missing_attributes_are_left_out() -> None:
    """An attribute without a source value is absent (so an update clears it)."""
    p = build_user(user(uid=["ada"]), MAPPING).payload
    assert set(p) == {"schemas", "userName", "externalId", "nickName", "active"}
    assert p["schemas"] == [CORE_USER_SCHEMA]


def test_disabled_account_is_inactive() -> None:
    source = SourceUser("id-1", "uid=a,dc=x", {"uid": ["a"]}, disabled=True)
    assert build_user(source, MAPPING).payload["active"] is False


def test_bad_entry_is_rejected_and_others_go_on() -> None:
    """An entry without userName is rejected with its reason; the others are built."""
    good = user(uid=["ada"])
    bad = SourceUser("id-2", "cn=nouid,dc=x", {"cn": ["No Uid"]})
    desired, rejected = transform_batch([bad, good], MAPPING)
    assert [d.user_name for d in desired] == ["ada"]
    assert rejected[0].dn == "cn=nouid,dc=x"
    assert "userName" in rejected[0].reason


def test_content_hash_ignores_key_order() -> None:
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_values_count_as_missing(value: str) -> None:
    p = build_user(user(uid=["ada"], title=[value]), MAPPING).payload
    assert "title" not in p


PHOTO_MAPPING = {**MAPPING, "photos": [MultiValuedRule(value="jpegPhoto", type="photo")]}


class TestBinaryValues:
    """A value that is not UTF-8 text (binary data) in an attribute the mapping reads."""

    def test_entry_is_rejected_naming_the_attribute_and_size(self) -> None:
        source = SourceUser(
            "id-1", "uid=ada,dc=x", {"uid": ["ada"], "jpegphoto": []}, binary=(("jpegphoto", 5),)
        )
        desired, rejected = transform_batch([source, user(uid=["bob"])], PHOTO_MAPPING)
        assert [d.user_name for d in desired] == ["bob"]
        assert rejected[0].dn == "uid=ada,dc=x"
        assert rejected[0].reason == (
            "attribute jpegPhoto holds binary data (a value of 5 bytes that is not UTF-8 text), "
            "which a SCIM string cannot carry; fix the entry or map a text attribute"
        )

    def test_in_a_template_too(self) -> None:
        source = SourceUser("id-1", "uid=a", {"uid": ["a"], "sn": []}, binary=(("sn", 3),))
        with pytest.raises(ValueError, match="attribute sn holds binary data"):
            build_user(source, MAPPING)  # name.formatted is "{givenName} {sn}"

    def test_binary_value_of_an_unmapped_attribute_does_not_matter(self) -> None:
        """Read for another target (or the account status), it is no reason to reject."""
        source = SourceUser("id-1", "uid=a", {"uid": ["a"]}, binary=(("jpegphoto", 9),))
        assert build_user(source, MAPPING).user_name == "a"

    def test_text_in_an_octet_string_attribute_is_sent(self) -> None:
        p = build_user(user(uid=["a"], jpegPhoto=["https://x/a.jpg"]), PHOTO_MAPPING).payload
        assert p["photos"] == [{"value": "https://x/a.jpg", "type": "photo"}]


def test_oversize_reason_names_the_size_the_limit_and_the_largest_attribute() -> None:
    payload = build_user(user(uid=["ada"], employeeType=["x" * 5000]), MAPPING).payload
    size = payload_bytes(payload)
    assert size == len(json.dumps(payload).encode()) and size > 5000
    assert oversize_reason(payload, size) is None
    assert oversize_reason(payload, 4096) == (
        f"the SCIM user is {size:,} bytes, over this target's max_user_bytes of 4,096: "
        "not sent (largest attribute: urn:example:custom:2.0:User:costCenter, 5,002 bytes)"
    )


def test_payload_bytes_counts_non_ascii_as_sent() -> None:
    """requests escapes non-ASCII characters: "ë" is 6 bytes on the wire."""
    assert payload_bytes({"a": "ë"}) == len('{"a": "\\u00eb"}')


class TestExpressions:
    """Constants, defaults and simple functions in the mapping (issue: a bare string was always
    an attribute name)."""

    def test_a_constant_a_default_and_functions(self) -> None:
        from tasks.ldap.extract import SourceUser
        from tasks.sync.transform import evaluate

        user = SourceUser("1", "uid=Ada,ou=p", {"uid": ["Ada"], "mail": [" Ada@Example.ORG "]})
        assert evaluate("=Employee", user) == ["Employee"]
        assert evaluate("title || =Staff", user) == ["Staff"]
        assert evaluate("mail || =none", user) == [" Ada@Example.ORG "]
        assert evaluate("lower(trim(mail))", user) == ["ada@example.org"]
        assert evaluate("lower({uid}@example.org)", user) == ["ada@example.org"]
        assert evaluate("upper(title) || upper(uid)", user) == ["ADA"]

    def test_only_the_attributes_read_are_requested(self) -> None:
        from tasks.ldap.extract import mapped_attributes

        mapping = {"userType": "=Employee", "title": "title || =Staff", "nick": "lower({uid}x)"}
        assert mapped_attributes([mapping]) == {"title", "uid"}

    def test_an_unknown_function_is_a_config_error_naming_the_key(self) -> None:
        from tasks.config import parse_config
        from tasks.errors import ConfigError

        config = {
            "source": {"url": "ldaps://ldap.example.org", "users": {"base_dn": "ou=p,dc=x"}},
            "targets": [
                {
                    "name": "app",
                    "url": "https://app.example.org/scim/v2",
                    "mapping": {"userName": "uid", "title": "capitalize(title)"},
                }
            ],
        }
        with pytest.raises(ConfigError, match=r"mapping.*title: unknown function capitalize"):
            parse_config(config)

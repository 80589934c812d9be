"""Groups: ranged member reads, member resolution, the group plan, PATCH chunks."""

from typing import Any

import pytest

from tasks.config import parse_config
from tasks.ldap.ad import parse_range, ranged_values
from tasks.ldap.extract import SourceUser
from tasks.ldap.groups import GroupExtraction, SourceGroup
from tasks.scim.dialect import Scim20
from tasks.state.store import GroupRecord, StateRecord
from tasks.sync.group_plan import plan_groups, resolve_groups
from tasks.sync.load_groups import member_chunks


def config(groups: dict[str, Any] | None = None, **target: Any):
    return parse_config(
        {
            "source": {
                "url": "ldap://x",
                "users": {"base_dn": "ou=people,dc=x"},
                "groups": {"base_dn": "ou=groups,dc=x", **(groups or {})},
            },
            "targets": [{"name": "t", "url": "http://t/v2", **target}],
        }
    )


class TestRangedRetrieval:
    def test_parse_range(self) -> None:
        assert parse_range("member;range=0-1499") == ("member", 0, 1499)
        assert parse_range("member;range=1500-*") == ("member", 1500, None)
        assert parse_range("member") is None

    def test_reads_every_range_until_the_star(self) -> None:
        """3,200 members come back in three reads, as AD serves them."""
        everyone = [f"cn=u{n}".encode() for n in range(3200)]
        asked: list[str] = []

        def fetch(attribute: str) -> tuple[str, list[bytes]]:
            asked.append(attribute)
            start = int(attribute.split("=")[1].split("-")[0])
            end = min(start + 1499, len(everyone) - 1)
            last = end == len(everyone) - 1
            name = f"member;range={start}-{'*' if last else end}"
            return name, everyone[start : end + 1]

        values = ranged_values("member;range=0-1499", everyone[:1500], fetch)
        assert values == everyone
        assert asked == ["member;range=1500-*", "member;range=3000-*"]

    def test_plain_attribute_needs_no_more_reads(self) -> None:
        def fetch(attribute: str) -> None:
            raise AssertionError("no read expected")

        assert ranged_values("member", [b"a"], fetch) == [b"a"]


def users(*uids: str) -> list[SourceUser]:
    return [SourceUser(f"id-{u}", f"uid={u},ou=people,dc=x", {}) for u in uids]


def group(cn: str, *members: str) -> SourceGroup:
    return SourceGroup(f"g-{cn}", f"cn={cn},ou=groups,dc=x", cn, tuple(members))


class TestResolve:
    def test_members_resolved_and_unknown_counted(self) -> None:
        extraction = GroupExtraction(
            [group("a", "uid=ann,ou=people,dc=x", "uid=ghost,ou=people,dc=x")], []
        )
        (desired,), warnings = resolve_groups(extraction, users("ann"), config().source.groups)
        assert desired.members == {"id-ann"}
        assert desired.unknown_members == 1
        assert warnings == []

    def test_flattening_with_a_cycle(self) -> None:
        extraction = GroupExtraction(
            [
                group("a", "uid=ann,ou=people,dc=x", "cn=b,ou=groups,dc=x"),
                group("b", "uid=bo,ou=people,dc=x", "cn=a,ou=groups,dc=x"),
            ],
            [],
        )
        query = config({"flatten_nested": True}).source.groups
        desired, warnings = resolve_groups(extraction, users("ann", "bo"), query)
        assert {d.display_name: d.members for d in desired} == {
            "a": {"id-ann", "id-bo"},
            "b": {"id-ann", "id-bo"},
        }
        assert warnings == ["nested group cycle: a → b → a", "nested group cycle: b → a → b"]

    def test_member_of_on_the_user_side(self) -> None:
        ann = SourceUser("id-ann", "uid=ann,ou=people,dc=x", {"memberof": ["CN=A,ou=groups,dc=x"]})
        query = config({"members_from": "user_member_of"}).source.groups
        (desired,), _ = resolve_groups(GroupExtraction([group("a")], []), [ann], query)
        assert desired.members == {"id-ann"}


def user_state(**status: str) -> dict[str, StateRecord]:
    return {
        f"id-{u}": StateRecord(f"id-{u}", f"scim-{u}", u, "", {}, s)  # type: ignore[arg-type]
        for u, s in status.items()
    }


class TestPlan:
    def test_create_update_delete_and_unchanged(self) -> None:
        extraction = GroupExtraction(
            [
                group("new", "uid=ann,ou=people,dc=x"),
                group("same", "uid=ann,ou=people,dc=x"),
                group("changed", "uid=ann,ou=people,dc=x", "uid=bo,ou=people,dc=x"),
            ],
            [],
        )
        target = config().targets[0]
        desired, _ = resolve_groups(extraction, users("ann", "bo"), config().source.groups)
        state = {
            "g-same": GroupRecord("g-same", "s1", "same", frozenset({"scim-ann"})),
            "g-changed": GroupRecord("g-changed", "s2", "old name", frozenset({"scim-ann"})),
            "g-gone": GroupRecord("g-gone", "s3", "gone", frozenset()),
        }
        plan = plan_groups(target, desired, user_state(ann="active", bo="disabled"), state)
        by_name = {a.display_name: a for a in plan.actions}
        assert by_name["new"].kind == "create" and by_name["new"].members == {"scim-ann"}
        assert by_name["changed"].rename and not by_name["changed"].add  # bo is disabled
        assert by_name["gone"].kind == "delete"
        assert plan.unchanged == 1
        assert plan.not_provisioned_members == {"changed": 1}

    def test_switches(self) -> None:
        extraction = GroupExtraction([group("new")], [])
        desired, _ = resolve_groups(extraction, [], config().source.groups)
        state = {"g-gone": GroupRecord("g-gone", "s3", "gone", frozenset())}
        target = config(create_groups=False, delete_groups=False).targets[0]
        plan = plan_groups(target, desired, {}, state)
        assert plan.actions == []
        assert [(s.display_name, s.would) for s in plan.skipped] == [
            ("new", "create"),
            ("gone", "delete"),
        ]

    def test_additive_keeps_foreign_members(self) -> None:
        extraction = GroupExtraction([group("g")], [])
        desired, _ = resolve_groups(extraction, [], config().source.groups)
        state = {"g-g": GroupRecord("g-g", "s", "g", frozenset({"x", "ours"}), frozenset({"x"}))}
        target = config(membership_mode="additive").targets[0]
        (action,) = plan_groups(target, desired, {}, state).actions
        assert action.remove == {"ours"} and action.keep == {"x"}


@pytest.mark.parametrize("size", [1, 2, 100])
def test_member_chunks_respect_the_limit(size: int) -> None:
    chunks = list(member_chunks({"a", "b", "c"}, {"x", "y"}, size))
    assert all(len(add) + len(remove) <= size for add, remove in chunks)
    assert sorted(m for add, _ in chunks for m in add) == ["a", "b", "c"]
    assert sorted(m for _, remove in chunks for m in remove) == ["x", "y"]


def test_member_removal_names_each_member_escaped() -> None:
    ops = Scim20().member_operations(["n1"], ['we"ird'])
    assert ops == [
        {"op": "remove", "path": 'members[value eq "we\\"ird"]'},
        {"op": "add", "path": "members", "value": [{"value": "n1"}]},
    ]

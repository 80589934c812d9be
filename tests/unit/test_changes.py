"""Incremental change detection, the pure parts: syncrepl BER, watermarks, what is gone,
and plans made from a cycle's changes only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tasks.config import parse_config
from tasks.ldap import syncrepl
from tasks.ldap.changes import (
    Changes,
    fingerprint,
    generalized_time,
    next_timestamp,
    start_of,
    timestamp_filter,
)
from tasks.ldap.extract import SourceUser
from tasks.state.store import StateRecord, Watermark
from tasks.sync.plan import plan_users
from tests.unit.test_plan import desired, kinds, record, target

# -- syncrepl BER -----------------------------------------------------------------------------

UUID_A = uuid.UUID("4dbe018a-808d-1041-80da-a12da1cd697e")
UUID_B = uuid.UUID("55f1592e-808d-1041-8e1f-a75c339518f5")


def tlv(tag: int, contents: bytes) -> bytes:
    assert len(contents) < 128
    return bytes([tag, len(contents)]) + contents


def test_sync_request_is_a_refresh_only_sequence_with_the_cookie() -> None:
    assert syncrepl.sync_request_value(None) == bytes.fromhex("3003 0a0101")
    assert syncrepl.sync_request_value(b"rid=1") == (
        tlv(0x30, tlv(0x0A, b"\x01") + tlv(0x04, b"rid=1"))
    )


def test_sync_state_reads_the_state_and_the_entry_uuid() -> None:
    value = tlv(0x30, tlv(0x0A, b"\x03") + tlv(0x04, UUID_A.bytes) + tlv(0x04, b"c"))
    state = syncrepl.sync_state(value)
    assert (state.state, state.entry_uuid, state.cookie) == ("delete", str(UUID_A), b"c")


def test_sync_info_id_set_lists_deleted_uuids() -> None:
    uuids = tlv(0x31, tlv(0x04, UUID_A.bytes) + tlv(0x04, UUID_B.bytes))
    value = tlv(0xA3, tlv(0x04, b"cookie") + tlv(0x01, b"\xff") + uuids)
    info = syncrepl.sync_info(value)
    assert info.kind == "syncIdSet" and info.refresh_deletes and info.cookie == b"cookie"
    assert info.uuids == (str(UUID_A), str(UUID_B))
    assert syncrepl.sync_info(tlv(0x80, b"new")).cookie == b"new"


def test_sync_done_defaults_to_the_present_phase() -> None:
    assert syncrepl.sync_done(tlv(0x30, tlv(0x04, b"c"))) == syncrepl.DoneValue(b"c", False)
    assert syncrepl.sync_done(tlv(0x30, tlv(0x01, b"\xff"))) == syncrepl.DoneValue(None, True)


@pytest.mark.parametrize(
    "value",
    [b"", b"\x30\x05\x0a\x01", tlv(0x30, tlv(0x0A, b"\x09") + tlv(0x04, UUID_A.bytes))],
)
def test_malformed_control_values_are_errors_not_guesses(value: bytes) -> None:
    with pytest.raises(syncrepl.BerError):
        syncrepl.sync_state(value)


def test_long_lengths_are_read() -> None:
    many = b"".join(tlv(0x04, uuid.UUID(int=n).bytes) for n in range(20))  # 360 bytes
    body = tlv(0x04, b"c") + bytes([0x31, 0x82]) + len(many).to_bytes(2, "big") + many
    value = bytes([0xA3, 0x82]) + len(body).to_bytes(2, "big") + body
    assert len(syncrepl.sync_info(value).uuids) == 20


# -- watermarks -------------------------------------------------------------------------------


def mark(value: str, method: str = "timestamp", server: str = "fp") -> Watermark:
    return Watermark(method, value, server)


def test_a_cycle_starts_from_the_oldest_watermark_of_its_targets() -> None:
    marks = {"a": mark("20261129100000Z"), "b": mark("20261129090000Z")}
    start = start_of("timestamp", marks, {"a": "fp", "b": "fp"})
    assert start.watermark == marks["b"]


@pytest.mark.parametrize(
    ("marks", "full", "why"),
    [
        ({"a": None}, False, "no watermark yet for a"),
        ({"a": mark("20261129100000Z")}, True, "a full pass was asked for (--full)"),
        ({"a": mark("20261129100000Z", server="old")}, False, "the source query or the mapping"),
        ({"a": mark("5", method="ad_usn")}, False, "change detection changed to timestamp"),
    ],
)
def test_a_full_pass_when_a_watermark_cannot_be_trusted(
    marks: dict[str, Watermark | None], full: bool, why: str
) -> None:
    start = start_of("timestamp", marks, {"a": "fp"}, full=full)
    assert start.watermark is None and start.why.startswith(why)


def test_differing_cookies_or_domain_controllers_mean_a_full_pass() -> None:
    cookies = {"a": mark("rid=1", "syncrepl"), "b": mark("rid=2", "syncrepl")}
    assert start_of("syncrepl", cookies, {"a": "fp", "b": "fp"}).watermark is None
    dcs = {"a": mark("dc-1:100", "ad_usn"), "b": mark("dc-2:90", "ad_usn")}
    assert start_of("ad_usn", dcs, {"a": "fp", "b": "fp"}).watermark is None
    same = {"a": mark("dc-1:100", "ad_usn"), "b": mark("dc-1:90", "ad_usn")}
    assert start_of("ad_usn", same, {"a": "fp", "b": "fp"}).watermark == same["b"]


def test_fingerprint_changes_with_the_filter_and_the_mapping() -> None:
    def config(filter_: str, title: str) -> Any:
        return parse_config(
            {
                "source": {"url": "ldap://x", "users": {"base_dn": "dc=x", "filter": filter_}},
                "targets": [
                    {
                        "name": "t",
                        "url": "http://t/v2",
                        "mapping": {"userName": "uid", "title": title},
                    }
                ],
            }
        )

    base = config("(uid=*)", "title")
    prints = {
        fingerprint(c.source, c.targets[0], ["uid"])
        for c in (base, config("(cn=*)", "title"), config("(uid=*)", "ou"))
    }
    assert len(prints) == 3
    assert fingerprint(base.source, base.targets[0], ["uid"]) == fingerprint(
        base.source, base.targets[0], ["UID"]
    )


def test_timestamp_filters() -> None:
    assert timestamp_filter("(uid=*)", "20261129235959Z", strictly_later=False) == (
        "(&(uid=*)(modifyTimestamp>=20261129235959Z))"
    )
    assert timestamp_filter("(uid=*)", "20261129235959Z", strictly_later=True) == (
        "(&(uid=*)(modifyTimestamp>=20261130000000Z))"
    )


def test_generalized_time_forms() -> None:
    expected = datetime(2026, 11, 29, 22, 0, 0, tzinfo=UTC)
    assert generalized_time("20261129220000Z") == expected
    assert generalized_time("20261129220000.0Z") == expected
    assert generalized_time("20261129230000+0100") == expected


def test_the_timestamp_watermark_never_passes_the_start_minus_the_overlap() -> None:
    started = datetime(2026, 11, 29, 22, 0, 0, tzinfo=UTC)
    seen = ["20261129215950Z", "20261129215000Z"]
    assert next_timestamp(seen, None, started, 60) == "20261129215900Z"
    assert next_timestamp(seen, None, started, 0) == "20261129215950Z"


def test_the_timestamp_watermark_never_goes_back_and_waits_for_news() -> None:
    started = datetime(2026, 11, 29, 22, 0, 0, tzinfo=UTC)
    assert next_timestamp([], "20261129100000Z", started, 60) == "20261129100000Z"
    assert next_timestamp(["20261129090000Z"], "20261129100000Z", started, 60) == (
        "20261129100000Z"
    )


# -- what is gone -----------------------------------------------------------------------------


def user(sid: str) -> SourceUser:
    return SourceUser(sid, f"uid={sid}", {})


def test_gone_after_a_full_pass_is_left_to_the_plan() -> None:
    assert Changes([user("a")], [], complete=True).gone(["a", "b"]) is None


def test_gone_from_an_id_scan_deletions_and_changes_elsewhere() -> None:
    scanned = Changes([user("a")], [], complete=False, present=frozenset({"a", "b"}))
    assert scanned.gone(["a", "b", "c"]) == {"c"}
    told = Changes([], [], complete=False, deleted=frozenset({"d"}))
    assert told.gone(["a", "d"]) == {"d"}
    moved = Changes([user("a")], [], complete=False, changed_elsewhere=frozenset({"a", "e"}))
    assert moved.gone(["a", "e", "f"]) == {"e"}  # a changed but is still in scope


# -- plans from a cycle's changes -------------------------------------------------------------


def test_an_incremental_plan_deprovisions_only_what_is_gone() -> None:
    ada, bob, cy = desired("1", "ada"), desired("2", "bob"), desired("3", "cy")
    state = {"1": record(ada), "2": record(bob), "3": record(cy)}
    changed = [desired("1", "ada", title="Dr")]
    plan = plan_users(target(), changed, [], state, gone={"3"})
    assert kinds(plan) == {"ada": "update", "cy": "disable"}
    assert plan.unchanged == 1  # bob: not in the cycle, still there


def test_an_incremental_plan_refuses_a_name_another_provisioned_user_has() -> None:
    ada = desired("1", "ada")
    plan = plan_users(target(), [desired("2", "ADA")], [], {"1": record(ada)}, gone=set())
    assert not plan.actions
    assert "provisioned for" in plan.rejected[0].reason


def test_references_resolve_through_the_dns_the_state_store_kept() -> None:
    boss = desired("1", "boss")
    boss_record = StateRecord("1", "scim-boss", "boss", "h", boss.payload, "active", dn="uid=boss")
    worker = desired("2", "worker")
    worker.payload["manager"] = {"$dn-reference": "uid=boss"}
    plan = plan_users(target(), [worker], [], {"1": boss_record}, gone=set())
    [create] = plan.actions
    assert create.payload is not None and create.payload["manager"] == "scim-boss"
    assert plan.deferred == 0


def test_a_moved_user_needing_no_write_has_its_dn_updated() -> None:
    ada = desired("1", "ada")
    old = StateRecord("1", "scim-1", "ada", ada.content_hash, ada.payload, "active", dn="uid=old")
    plan = plan_users(target(), [ada], [], {"1": old}, gone=set())
    assert not plan.actions and plan.moved == {"1": "uid=ada"}


def test_gone_names_only_provisioned_users() -> None:
    """Deleted ids the store does not know (a computer's tombstone) are nobody's business."""
    told = Changes([], [], complete=False, deleted=frozenset({"d", "computer"}))
    assert told.gone(["a", "d"]) == {"d"}


def test_a_name_freed_in_the_same_cycle_can_be_taken() -> None:
    """jdoe's account is gone in this cycle and a new entry takes userName jdoe: created."""
    old = desired("1", "jdoe")
    plan = plan_users(target(), [desired("2", "jdoe")], [], {"1": record(old)}, gone={"1"})
    assert sorted((a.kind, a.source_id) for a in plan.actions) == [
        ("create", "2"),
        ("disable", "1"),
    ]
    assert not plan.rejected


def test_a_dn_taken_again_resolves_to_the_active_account() -> None:
    gone = StateRecord("1", "scim-old", "old", "h", {}, "active", dn="uid=boss")
    gone.status = "disabled"
    new = StateRecord("2", "scim-new", "boss", "h", {}, "active", dn="uid=boss")
    worker = desired("3", "worker")
    worker.payload["manager"] = {"$dn-reference": "uid=boss"}
    for state in ({"2": new, "1": gone}, {"1": gone, "2": new}):
        [create] = plan_users(target(), [worker], [], state, gone=set()).actions
        assert create.payload is not None and create.payload["manager"] == "scim-new"


def test_syncrepl_needs_entryuuid_ids() -> None:
    from tasks.errors import ConfigError

    source = {"url": "ldap://x", "change_detection": "syncrepl"}
    with pytest.raises(ConfigError, match="entryUUID"):
        parse_config(
            {
                "source": {**source, "users": {"base_dn": "dc=x", "id_attribute": "uid"}},
                "targets": [{"name": "t", "url": "http://t/v2"}],
            }
        )


def test_a_read_only_store_from_an_earlier_version_is_read(tmp_path: Any) -> None:
    """``plan`` and ``audit`` open the store read-only (never upgraded): a store written before
    the DN and ETag columns existed still gives its records."""
    import sqlalchemy as sa

    from tasks.state.store import StateStore

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "create table provisioned_users (target text, source_id text, scim_id text, "
                "user_name text, content_hash text, payload text, status text, updated_at "
                "timestamp, primary key (target, source_id))"
            )
        )
        conn.execute(
            sa.text(
                "insert into provisioned_users values "
                "('t', 's1', 'scim-1', 'ada', 'h', :payload, 'active', '2026-01-01 00:00:00')"
            ),
            {"payload": '{"userName": "ada"}'},
        )
    engine.dispose()
    store = StateStore(url, read_only=True)
    [record] = store.records("t").values()
    store.close()
    assert (record.user_name, record.dn, record.version) == ("ada", None, None)
    assert record.payload == {"userName": "ada"}


def test_a_full_pass_says_who_asked_for_it() -> None:
    """A group pass after a full user pass does not claim that --full was given."""
    start = start_of("timestamp", {}, {}, full=True, full_because="the user cycle was a full pass")
    assert start.watermark is None and start.why == "the user cycle was a full pass"
    assert start_of("timestamp", {}, {}, full=True).why == "a full pass was asked for (--full)"

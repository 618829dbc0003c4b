"""Events are data: typed fields written once, a sentence rendered from them, and a stored form
that older and newer versions can both read (core.events, runtime.layout)."""
from __future__ import annotations

import json

import pytest

from haven.core.events import Event, EventKind, SubjectKind, from_dict, render, to_dict
from haven.model.spec import MigrationKind
from haven.runtime.layout import decode_event, encode_event

MIGRATED = Event(31.2, "manager", EventKind.MIGRATED, subject_kind=SubjectKind.VM, name="web", old="migrating",
                 new="running", host="h2", migration=MigrationKind.LIVE, from_host="h1", to_host="h2",
                 generation=3, seconds=1.2244, downtime_s=0.023, detail="to h2: 465 ms, downtime 23 ms")


def test_the_sentence_is_rendered_from_the_fields() -> None:
    assert MIGRATED.line() == ("t=31.200 manager  vm web: migrating -> running on h2 "
                               "(live from h1, 1.224 s; to h2: 465 ms, downtime 23 ms)")
    lost = Event(20.0, "manager", EventKind.STATE_CHANGE, subject_kind=SubjectKind.HOST, name="h2", old="online",
                 new="lost", reason="lease gone")
    assert lost.line() == "t=20.000 manager  host h2: online -> lost (lease gone)"
    start = Event(20.3, "manager", EventKind.STATE_CHANGE, subject_kind=SubjectKind.VM, name="web",
                  old="recovering", new="starting", host="h3", generation=2, priority=3, reason="host h2 fenced")
    assert start.message == "recovering -> starting on h3 (generation 2, priority 3, host h2 fenced)"
    earlier = Event(9.0, "store", EventKind.LEASE_EXPIRED, subject_kind=SubjectKind.HOST, name="h1", lease=7,
                    reason="an earlier lease")
    assert earlier.line() == "t=9.000 store    host h1: lease 7 expired (an earlier lease)"
    current = Event(9.0, "store", EventKind.LEASE_EXPIRED, subject_kind=SubjectKind.HOST, name="h1", lease=8)
    assert current.line() == "t=9.000 store    host h1: lease expired"
    retired = Event(6.2, "agent h1", EventKind.RETIRED, subject_kind=SubjectKind.VM, name="web", host="h1",
                    to_host="h3", generation=1)
    assert retired.line() == "t=6.200 agent h1 vm web: retired the source copy after migration to h3"


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_kind_renders_a_sentence(kind: EventKind) -> None:
    event = Event(1.0, "x", kind, subject_kind=SubjectKind.VM, name="a", old="running", new="stopped",
                  host="h2", generation=2, from_host="h1", to_host="h2", seconds=1.0, text="something",
                  reason="why", lease=1, count=1, action="start", migration=MigrationKind.LIVE)
    assert render(event) and "None" not in render(event)


def test_the_stored_form_carries_the_fields_and_the_sentence_last() -> None:
    data = json.loads(encode_event(MIGRATED))
    assert data["kind"] == "migrated" and data["downtime_s"] == 0.023 and data["migration"] == "live"
    assert list(data)[-1] == "message" and data["message"] == MIGRATED.message  # for older readers
    assert data["subject"] == "vm web"
    assert "reason" not in data and "lease" not in data  # unset fields are left out
    assert decode_event(encode_event(MIGRATED)) == MIGRATED


def test_an_old_four_field_event_is_read_as_text() -> None:
    old = json.dumps({"t": 12.5, "source": "manager", "subject": "vm web", "message": "starting -> running on h2"})
    event = decode_event(old)
    assert event.kind is EventKind.TEXT and event.subject_kind is SubjectKind.VM and event.name == "web"
    assert event.line() == "t=12.500 manager  vm web: starting -> running on h2"
    assert event.old is None and event.new is None  # nothing guessed from the words
    assert json.loads(encode_event(event)) == json.loads(old)  # and written back as it was
    odd = decode_event(json.dumps({"t": 1, "source": "fault", "subject": "cluster", "message": "power off h1"}))
    assert odd.line() == "t=1.000 fault    cluster: power off h1"


def test_a_newer_writer_is_read_as_far_as_this_version_understands_it() -> None:
    data = {**to_dict(MIGRATED), "kind": "teleported", "colour": "blue"}
    assert from_dict(data).kind is EventKind.TEXT and from_dict(data).message == MIGRATED.message
    extra = {**to_dict(MIGRATED), "colour": "blue"}  # a field this version does not know
    assert from_dict(extra) == MIGRATED


@pytest.mark.parametrize("value", ["[]", '{"t": 1}', '"text"', "not json"])
def test_what_is_not_an_event_raises_a_value_key_or_type_error(value: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode_event(value)

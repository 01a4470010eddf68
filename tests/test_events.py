"""Event kinds are an enum: a mistyped kind is refused where the event is made."""

import pytest

from common.events import Event, EventKind


def test_a_mistyped_event_kind_fails_loudly():
    with pytest.raises(ValueError, match="scord"):
        Event("scord")
    with pytest.raises(AttributeError):
        Event(EventKind.SCORD)  # the typo under test


def test_a_kind_is_its_member_and_equals_its_string():
    event = Event("update", round=3)
    assert event.kind is EventKind.UPDATE and event.kind == "update"

"""Event kinds are an enum: a mistyped kind is refused where the event is made."""

import pytest

from common.app import EXIT_CODES
from common.events import Event, EventKind, Outcome


def test_a_mistyped_event_kind_fails_loudly():
    with pytest.raises(ValueError, match="scord"):
        Event("scord")
    with pytest.raises(AttributeError):
        Event(EventKind.SCORD)  # the typo under test


def test_a_kind_is_its_member_and_equals_its_string():
    event = Event("update", round=3)
    assert event.kind is EventKind.UPDATE and event.kind == "update"


def test_each_outcome_has_its_ending_event_and_its_exit_code():
    assert [EventKind(outcome) for outcome in Outcome] == [
        EventKind.DONE,
        EventKind.GAVE_UP,
        EventKind.PATIENCE,
        EventKind.STOPPED,
    ]
    assert EXIT_CODES.keys() == set(Outcome)  # one mapping, none left out
    assert [EXIT_CODES[o] for o in Outcome] == [0, 2, 3, 1]
    assert Outcome.GAVE_UP == "gave_up"  # as logs and the wire said it before it had a name

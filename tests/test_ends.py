"""How a stream ended: the reasons' values are names that clients, logs and metrics labels
depend on, and an end report is a value that cannot change."""

from __future__ import annotations

import dataclasses

import pytest

from streamkit import EndReason, StreamEnd


def test_the_reasons_are_the_names_their_users_see() -> None:
    # The values label the metrics (reason="send_timeout") and the introspection document:
    # renaming one breaks dashboards, so this list changes only on purpose.
    assert [reason.value for reason in EndReason] == [
        "completed",
        "client_disconnected",
        "send_timeout",
        "deadline",
        "shutdown",
        "error",
    ]
    assert all(reason.value == reason.name.lower() for reason in EndReason)


def test_an_end_report_is_keyword_only_and_cannot_be_changed() -> None:
    end = StreamEnd(
        reason=EndReason.COMPLETED,
        path="/x",
        duration=0.5,
        items_sent=1,
        bytes_sent=2,
        cleanup_duration=0.0,
    )
    assert end.exception is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        end.reason = EndReason.ERROR  # type: ignore[misc]
    with pytest.raises(TypeError):
        StreamEnd(EndReason.COMPLETED, "/x", 0.5, 1, 2, 0.0)  # type: ignore[call-arg]

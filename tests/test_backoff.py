"""When the client reconnects and when it gives up: the delays, their jitter and bounds, the
server's retry as a floor, and Retry-After in both of its forms."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from streamkit._backoff import retry_after_seconds
from streamkit.client import Backoff


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_delay_grows_by_the_multiplier_up_to_max_delay() -> None:
    backoff = Backoff(initial_delay=0.5, max_delay=3.0, multiplier=2.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff.delay(10_000) == 3.0  # no overflow after a long outage


def test_the_delay_reaches_max_delay_whatever_the_multiplier() -> None:
    # A large multiplier overflowed a float after 62 failures (OverflowError out of the
    # client's iteration); a gentle one stopped growing at the 64th, short of max_delay.
    steep = Backoff(initial_delay=1.0, multiplier=1e5, max_delay=30.0, jitter=0.0)
    assert [steep.delay(n) for n in (0, 1, 62, 10_000)] == [1.0, 30.0, 30.0, 30.0]
    gentle = Backoff(initial_delay=1.0, multiplier=1.05, max_delay=30.0, jitter=0.0)
    assert gentle.delay(60) == pytest.approx(1.05**60)
    assert gentle.delay(100) == 30.0
    assert Backoff(multiplier=1.0, jitter=0.0).delay(10**9) == 1.0


def test_jitter_stretches_a_wait_never_shortens_it() -> None:
    backoff = Backoff(initial_delay=1.0, jitter=0.5)
    assert backoff.delay(0, rng=Fixed(0.0)) == 1.0
    assert backoff.delay(0, rng=Fixed(0.999)) == pytest.approx(1.4995)
    waits = {backoff.delay(0) for _ in range(50)}
    assert len(waits) > 1
    assert all(1.0 <= wait <= 1.5 for wait in waits)


def test_the_servers_retry_replaces_the_initial_delay_and_is_a_floor() -> None:
    backoff = Backoff(initial_delay=0.1, max_delay=2.0, jitter=0.0)
    assert backoff.delay(0, server_retry=0.25) == 0.25
    assert backoff.delay(2, server_retry=0.25) == 1.0
    # Asked for more than max_delay, the server still gets what it asked for.
    assert backoff.delay(0, server_retry=10.0) == 10.0


def test_a_retry_below_min_retry_counts_as_min_retry_and_still_grows() -> None:
    backoff = Backoff(min_retry=0.1, max_delay=2.0, jitter=0.0)
    assert [backoff.delay(n, server_retry=0.0) for n in range(3)] == [0.1, 0.2, 0.4]
    assert backoff.delay(0, server_retry=0.05) == 0.1
    assert backoff.delay(0, server_retry=0.5) == 0.5


def test_retry_after_is_a_floor_for_one_wait_and_never_skips_the_backoff() -> None:
    backoff = Backoff(initial_delay=0.5, jitter=0.0)
    assert backoff.delay(2, retry_after=0.0) == 2.0
    assert backoff.delay(2, retry_after=7.0) == 7.0
    # Past max_delay too: the server said when.
    assert backoff.delay(0, retry_after=3600.0) == 3600.0


def test_a_wait_that_would_end_past_max_reconnect_time_gives_up_now() -> None:
    backoff = Backoff(max_reconnect_time=60.0)
    assert not backoff.gives_up(0, 10.0, 49.0)
    assert backoff.gives_up(0, 10.0, 50.0)
    assert backoff.gives_up(0, 0.0, 3600.0)
    assert not Backoff().gives_up(0, 0.0, 1e9)


def test_it_gives_up_after_max_attempts_or_max_reconnect_time() -> None:
    assert not Backoff().gives_up(1000, 1e6)
    by_count = Backoff(max_attempts=3)
    assert not by_count.gives_up(2, 0.0)
    assert by_count.gives_up(3, 0.0)
    by_time = Backoff(max_reconnect_time=5.0)
    assert not by_time.gives_up(100, 4.9)
    assert by_time.gives_up(0, 5.0)


@pytest.mark.parametrize(
    ("arguments", "error", "named"),
    [
        ({"initial_delay": 0}, ValueError, "initial_delay"),
        ({"min_retry": -0.1}, ValueError, "min_retry"),
        ({"max_delay": float("inf")}, ValueError, "max_delay"),
        ({"multiplier": 0.5}, ValueError, "multiplier must be at least 1, got 0.5"),
        ({"jitter": 1.5}, ValueError, "jitter must be between 0 and 1, got 1.5"),
        ({"jitter": "0.1"}, TypeError, "jitter must be a number, got str"),
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": 2.0}, TypeError, "max_attempts"),
        ({"max_reconnect_time": -1}, ValueError, "max_reconnect_time"),
        # Waited max_delay's 30 s, not the minute asked for.
        (
            {"initial_delay": 60.0},
            ValueError,
            r"initial_delay 60.0 is longer than max_delay 30.0, which bounds every wait",
        ),
    ],
)
def test_bad_values_are_refused_naming_them(
    arguments: dict[str, object], error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named):
        Backoff(**arguments)  # type: ignore[arg-type]


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:07 GMT", now=now) == 7.0
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert retry_after_seconds("9" * 19) == float("9" * 19)
    # Longer than any retry is read (and 400 digits would be an infinite float): none.
    for nonsense in (None, "", "-1", "1.5", "soon", "9" * 20, "9" * 400):
        assert retry_after_seconds(nonsense) is None


@pytest.mark.parametrize(
    "date",
    [
        "Tue, 1 Dec 1970 999999999999999999999:00:00 GMT",
        "Mon, 1 Dec 2026 00:00:00 +99999999999999999999",
    ],
    ids=["hour", "zone"],
)
def test_a_retry_after_date_with_a_field_too_large_for_a_date_is_none(date: str) -> None:
    # email.utils raised OverflowError on them, out of the client's iteration.
    assert retry_after_seconds(date) is None

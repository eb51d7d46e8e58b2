"""A service a test needs and cannot have: a skip locally, a failure under CI."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import browser, postgres_server, redis_server

SKIPPED, FAILED = pytest.skip.Exception, pytest.fail.Exception


def redis_missing(tmp_path: Path) -> None:
    redis_server.RedisServer(tmp_path)


def postgres_missing(tmp_path: Path) -> None:
    with postgres_server.running():
        pass


def chromium_missing(tmp_path: Path) -> None:
    browser.require_chromium()


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_server, "find", lambda: None)
    monkeypatch.setattr(postgres_server, "find", lambda: None)
    monkeypatch.setattr(browser, "find_chromium", lambda: None)


@pytest.mark.usefixtures("nothing_installed")
@pytest.mark.parametrize("service", [redis_missing, postgres_missing, chromium_missing])
@pytest.mark.parametrize(("ci", "outcome"), [(None, SKIPPED), ("", SKIPPED), ("true", FAILED)])
def test_a_missing_service_skips_locally_and_fails_under_ci(
    service: object,
    ci: str | None,
    outcome: type[BaseException],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert callable(service)
    try:
        service(tmp_path)
    except (SKIPPED, FAILED) as exc:  # caught as such: a skip under CI must fail this test
        caught: BaseException = exc
    else:
        pytest.fail("no skip and no failure: the service was found after all")
    assert type(caught) is outcome, f"{type(caught).__name__}: {caught}"
    assert "install" in str(caught)

"""Settings from the environment; a wrong value names the variable to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("UBS_") or name == "REDIS_URL":
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.bundle_dir == Path("bundles/default")
    assert s.redis_url is None and s.api_key is None
    assert (s.cache_ttl_s, s.cache_max_entries, s.redis_timeout_ms) == (86400, 100_000, 50.0)
    assert (s.max_batch_size, s.max_wait_ms, s.max_queue) == (32, 2.0, 4096)
    assert (s.max_sequences_per_request, s.max_events_per_sequence, s.max_body_bytes) == (256, 10_000, 8 * 1024 * 1024)
    assert (s.provider, s.intra_op_threads, s.host, s.port, s.log_level) == ("auto", 0, "127.0.0.1", 8000, "info")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UBS_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("UBS_MAX_WAIT_MS", "0.5")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("UBS_API_KEY", "secret")
    monkeypatch.setenv("UBS_PROVIDER", "CPU")
    s = load_settings()
    assert s.max_batch_size == 8 and s.max_wait_s == 0.0005
    assert s.redis_url == "redis://cache:6379/0"
    assert s.api_key is not None and s.api_key.get_secret_value() == "secret"
    assert s.provider == "cpu"


def test_empty_redis_url_means_no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    assert load_settings().redis_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UBS_MAX_BATCH_SIZE", "0"),
        ("UBS_MAX_WAIT_MS", "soon"),
        ("UBS_PROVIDER", "tpu"),
        ("UBS_PORT", "70000"),
        ("REDIS_URL", "http://cache:6379"),
        ("UBS_REDIS_TIMEOUT_MS", "-1"),
    ],
)
def test_wrong_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_queue_must_hold_the_largest_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UBS_MAX_QUEUE", "10")
    with pytest.raises(SettingsError, match="UBS_MAX_QUEUE"):
        load_settings()

"""Service settings: one object, read from environment variables.

Every field is `UBS_<FIELD>` in the environment, except `REDIS_URL`. A wrong
value fails at start with a `SettingsError` that names the variable to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "UBS_"
REDIS_URL_ENV = "REDIS_URL"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class SettingsError(ValueError):
    """A setting with a wrong value; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    bundle_dir: Path = Path("bundles/default")
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices(REDIS_URL_ENV, "redis_url"))
    cache_ttl_s: int = Field(default=86400, ge=1)
    cache_max_entries: int = Field(default=100_000, ge=1)
    redis_timeout_ms: float = Field(default=50.0, gt=0, le=10_000)
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_wait_ms: float = Field(default=2.0, ge=0, le=60_000)
    max_queue: int = Field(default=4096, ge=1)
    max_sequences_per_request: int = Field(default=256, ge=1)
    max_events_per_sequence: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    api_key: SecretStr | None = None
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(default=0, ge=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @field_validator("redis_url", "api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `REDIS_URL=` in a compose file means "no Redis", not "connect to ''".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)}")
        return value

    @field_validator("provider", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        # A request larger than the whole queue could never be accepted.
        if self.max_queue < self.max_sequences_per_request:
            raise ValueError(
                f"{env_name('max_queue')} ({self.max_queue}) must be at least "
                f"{env_name('max_sequences_per_request')} ({self.max_sequences_per_request})"
            )
        return self

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def redis_timeout_s(self) -> float:
        return self.redis_timeout_ms / 1000.0


def env_name(field: str) -> str:
    """The environment variable that sets a field."""
    return REDIS_URL_ENV if field == "redis_url" else ENV_PREFIX + field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and explicit overrides); SettingsError names the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = ["redis_url" if part == REDIS_URL_ENV else str(part) for part in error["loc"]]
            message = error["msg"].removeprefix("Value error, ")
            if loc:
                problems.append(f"{env_name(loc[0])}: {message}")
            else:
                problems.append(message)
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None

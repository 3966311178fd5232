"""Service settings: environment variables with the prefix DISCOSEG_ (pydantic-settings)."""

import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from models.devices import Device

ENV_PREFIX = "DISCOSEG_"


class InvalidSettings(ValueError):
    """A setting that cannot be used; the message is one line naming the variable."""


class Settings(BaseSettings):
    """Every field is read from DISCOSEG_<FIELD NAME>; the README lists them with defaults."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=None, extra="ignore")

    model_path: Path = Field(
        default=Path(".cache/demo/model.pt"), description="the model bundle to serve"
    )
    device: Device = Field(
        default="auto", description="where the networks run: auto picks CUDA when present"
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="accepted bearer tokens (JSON list); empty: no authentication",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins (scheme://host[:port], JSON list) whose pages may call the API; "
        "empty: same-origin only",
    )

    # Limits on what a request may ask for.
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=16_000_000, gt=0)
    max_boxes: int = Field(default=100, gt=0)
    max_k: int = Field(default=32, ge=1)
    max_files_per_job: int = Field(default=1000, gt=0)
    max_job_bytes: int = Field(
        default=4 * 2**30, gt=0,
        description="a job's files once staged (zip members unpacked), and its request body",
    )
    max_inflight: int = Field(
        default=8, gt=0, description="model calls queued or running before 503 + Retry-After"
    )
    proposal_cache_size: int = Field(default=64, ge=0)
    proposal_cache_mb: int = Field(
        default=256, ge=0, description="memory bound of the proposal cache (bit-packed masks)"
    )

    # Batch jobs.
    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db switches jobs to Celery + Redis; unset: embedded",
    )
    data_root: Path = Field(
        default=Path("data"), description="server-side folder that COCO jobs may read images from"
    )
    job_store: Path = Field(
        default=Path(".cache/jobs"), description="where job inputs and results are kept"
    )
    job_chunk_size: int = Field(default=8, gt=0)
    job_result_ttl_s: int = Field(default=24 * 3600, gt=0)
    job_chunk_time_limit_s: int = Field(default=600, gt=0)
    job_fetched_ttl_s: int = Field(
        default=3600, gt=0,
        description="a fetched result is kept this long after its first fetch (at most its TTL)",
    )
    job_redelivery_timeout_s: int | None = Field(
        default=None, gt=0,
        description="a chunk whose worker vanished is delivered again after this long; "
        "unset: job_chunk_time_limit_s + 60 (it must exceed the time limit)",
    )

    # Label Studio ML backend (/ls).
    label_studio_url: str | None = Field(
        default=None,
        description="Label Studio's URL: the only host task images (/data/...) are fetched "
        "from; the host a /ls/setup call names is never fetched from",
    )
    label_studio_api_key: SecretStr | None = Field(
        default=None, description="a Label Studio access token for those image downloads "
        "(a /ls/setup call's token replaces it for its project)"
    )
    label_studio_events: Path = Field(
        default=Path(".cache/labelstudio/events.jsonl"),
        description="where /ls/webhook records annotation events (JSON lines) for training",
    )
    label_studio_k: int = Field(
        default=3, ge=1, description="predictions per task when the task has hints (samples)"
    )

    @property
    def redelivery_timeout_s(self) -> int:
        """After this long a chunk whose worker vanished is delivered again."""
        return self.job_redelivery_timeout_s or self.job_chunk_time_limit_s + 60

    @field_validator("api_keys")
    @classmethod
    def _refuse_weak_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        weak = [k for k in keys if len(k.get_secret_value()) < 16]
        if weak:
            raise ValueError("every API key must be at least 16 characters long")
        return keys


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, `overrides` taking precedence; raises InvalidSettings
    with one line naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{name} ({ENV_PREFIX}{name.upper()}): {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
            for name in ['.'.join(map(str, e["loc"]))]
        )
        raise InvalidSettings(f"invalid settings: {problems}") from None
    except SettingsError as error:
        # pydantic-settings names the field, not the variable: 'error parsing value for
        # field "api_keys" from source "EnvSettingsSource"'.
        field = re.search(r'field "(\w+)"', str(error))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "a DISCOSEG_ variable"
        raise InvalidSettings(
            f'invalid settings: {name} is not valid JSON (a list is written ["a", "b"])'
        ) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()

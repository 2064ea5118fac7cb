"""Every configuration setting of the service, read from ``OBP_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """One line per missing or wrong setting, naming its environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBP_", extra="ignore", frozen=True)

    adapters: Literal["fake"] = Field(
        "fake", description="Which adapters to wire: 'fake' (in memory)."
    )
    provisioning_timeout_minutes: int = Field(
        60, ge=1, le=24 * 60, description="How long a run may wait for its cluster."
    )
    max_submit_attempts: int = Field(
        5, ge=1, le=100, description="Submissions tried before a run fails."
    )
    cluster_cache_seconds: int = Field(
        60, ge=0, le=3600, description="How long a cluster's description is reused."
    )
    sync_max_attempts: int = Field(
        3, ge=1, le=20, description="Data-sync attempts before a run fails."
    )
    direct_upload_max_file_bytes: int = Field(
        5 * 1024**3, ge=1, description="Largest output uploaded directly (no Lustre)."
    )
    direct_upload_max_total_bytes: int = Field(
        50 * 1024**3, ge=1, description="Largest total of a run's direct upload."
    )
    max_log_bytes: int = Field(
        256 * 1024, ge=1024, le=16 * 1024**2, description="Largest log tail served."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the service's own loggers."
    )


def load_settings(**overrides: object) -> Settings:
    """Read the settings; every problem is reported at once, by variable name."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            name = "OBP_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None

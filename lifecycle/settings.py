"""Settings of the lifecycle: per model (``models[].lifecycle``), nginx, and alert delivery."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AnyHttpUrl, Field, ValidationInfo, field_validator

from tfwarden.core.settings import Settings, resolve_path

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class LifecycleSettings(Settings):
    """Automatic canary management of one model (needs the endpoint's model_config_file)."""

    enabled: bool = True
    auto_canary: bool = Field(True, description="A new version directory starts a canary.")
    version_poll_seconds: float = Field(5.0, ge=1, le=3600)
    keep_previous_seconds: float = Field(
        3600.0, ge=0, description="Keep the previous version loaded this long after a promotion.")
    max_auto_stagings_per_hour: int = Field(
        6, ge=1, le=120, description="Automatic canary stagings (new version directories) per "
        "hour at most; a version that fails to stage is tried again with a doubling backoff.")
    router: Literal["labels", "nginx", "shadow"] = Field(
        "labels", description="labels: clients pick stable/canary; nginx: weighted split; "
        "shadow: no live traffic to the canary, judged on replayed golden requests.")


class NginxSettings(Settings):
    """The nginx that fronts TF Serving (lifecycle.router: nginx; example in deploy/nginx)."""

    conf: Path = Field(description="nginx's main configuration file (-c).")
    prefix: Path = Field(Path("/etc/nginx"), description="nginx's prefix (-p).")
    include_dir: Path = Field(description="Directory tfwarden writes its include files to.")
    binary: str = "nginx"
    mirror_url: AnyHttpUrl | None = Field(
        None, description="Where sampled predict bodies are mirrored (tfwarden's capture API).")
    mirror_percent: int = Field(10, ge=1, le=100)

    @field_validator("conf", "prefix", "include_dir")
    @classmethod
    def _resolve(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)


class AlertmanagerSettings(Settings):
    url: AnyHttpUrl = Field(description="Alertmanager base URL; alerts go to /api/v2/alerts.")
    timeout_seconds: float = Field(5.0, gt=0, le=60)


class WebhookSettings(Settings):
    url: AnyHttpUrl
    timeout_seconds: float = Field(5.0, gt=0, le=60)


class AlertSettings(Settings):
    """Where tfwarden's own alerts go, and the labels they carry."""

    alertmanager: AlertmanagerSettings | None = None
    webhooks: list[WebhookSettings] = []
    labels: dict[str, str] = Field({}, description="Extra labels added to every alert.")
    page_url: AnyHttpUrl | None = Field(
        None, description="Where people reach this daemon (its status page and runbooks), e.g. "
                          "https://tfwarden.example.internal; tfwarden's own alerts link to them "
                          "(runbook_url, status_url annotations). Default: http(s)://server.listen.")

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _LABEL_NAME.match(name):
                raise ValueError(f"label name {name!r} must match [a-zA-Z_][a-zA-Z0-9_]*")
        return value

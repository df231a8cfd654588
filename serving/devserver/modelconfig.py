"""Model server configuration: TF Serving's text-proto ``ModelServerConfig`` and its rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import text_format

from tfwarden.core.errors import ServingStatus

PARSE_ERROR = "Error parsing text-format tensorflow.serving.ModelServerConfig"


def _config_pb2() -> Any:
    from tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2


def parse_config_text(text: str) -> Any:
    """Parse a text-format ModelServerConfig; raise ServingStatus naming TF Serving's error."""
    config = _config_pb2().ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ServingStatus("INVALID_ARGUMENT", f"{PARSE_ERROR}: {exc}") from None
    return config


def read_config_file(path: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ServingStatus("INVALID_ARGUMENT", f"Could not read {path}: {exc.strerror}") from None
    return parse_config_text(text)


def single_model_config(name: str, base_path: str) -> Any:
    """The config TF Serving builds from --model_name/--model_base_path."""
    config = _config_pb2().ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def validate_config(config: Any, served_platforms: dict[str, str]) -> None:
    """ServerCore's checks before a config is applied (INVALID_ARGUMENT on failure)."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ServingStatus("INVALID_ARGUMENT",
                            "ServerCore only supports model_config_list, not custom_model_config")
    names: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in names:
            raise ServingStatus("INVALID_ARGUMENT",
                                f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
        if not (model.base_path.startswith("/") or "://" in model.base_path):
            raise ServingStatus("INVALID_ARGUMENT",
                                f"Expected model {model.name} to have an absolute path or URI; "
                                f"got base_path()={model.base_path}")
        has_type = model.model_type != 0
        if has_type == bool(model.model_platform):
            raise ServingStatus("INVALID_ARGUMENT",
                                "Illegal setting both model_type(deprecated) and model_platform."
                                if has_type else
                                "Illegal setting neither model_type(deprecated) nor model_platform.")
        previous = served_platforms.get(model.name)
        if previous is not None and previous != model.model_platform:
            raise ServingStatus("INVALID_ARGUMENT",
                                f"Illegal to change a model's platform. For model {model.name} "
                                f"platform was {previous} and new platform requested is "
                                f"{model.model_platform}")
        if model.HasField("logging_config"):
            raise ServingStatus("INVALID_ARGUMENT", "No request-logger-creator provided.")


def aspired_versions(model: Any, on_disk: list[int]) -> list[int]:
    """Versions the version policy asks for, among those on disk."""
    policy = model.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(on_disk)
    if which == "specific":
        wanted = set(policy.specific.versions)
        return sorted(v for v in on_disk if v in wanted)
    count = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return sorted(on_disk)[-count:] if on_disk else []

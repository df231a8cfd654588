"""TF Serving's model config file (``--model_config_file``): read, change, write atomically.

The file is the source of truth for what a server loads and how its labels point. It is read,
changed for one model, validated by parsing it back, and written so that a reader sees the old
or the new file, never a partial one (temp file in the same directory, fsync, rename, fsync of
the directory).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from tfwarden.core.errors import ServingError
from tfwarden.serving.tfserving import protos


@dataclass(frozen=True)
class ModelPlan:
    """What one model's entry should say: the versions to keep loaded and the labels."""

    versions: tuple[int, ...]
    labels: dict[str, int]


def read_config(path: Path) -> Any:
    config = protos.load().model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except (OSError, text_format.ParseError) as exc:
        raise ServingError(f"model config file {path}: {exc}") from exc
    return config


def write_config_atomically(path: Path, config: Any) -> None:
    """Write ``config`` so that a reader sees the old or the new file, never a partial one."""
    text = text_format.MessageToString(config)
    check = protos.load().model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, check)  # parse back before anything touches the real file
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _entry(config: Any, model: str) -> Any:
    for entry in config.model_config_list.config:
        if entry.name == model:
            return entry
    raise ServingError(f"model {model!r} is not in the model config file")


def with_plan(config: Any, model: str, plan: ModelPlan) -> Any:
    """A copy of ``config`` where ``model`` serves ``plan.versions`` with ``plan.labels``."""
    missing = {label: v for label, v in plan.labels.items() if v not in plan.versions}
    if missing:
        raise ServingError(f"model {model!r}: labels {missing} point at versions not in "
                           f"{list(plan.versions)}")
    new = type(config)()
    new.CopyFrom(config)
    entry = _entry(new, model)
    entry.model_version_policy.ClearField("policy_choice")
    entry.model_version_policy.specific.versions.extend(sorted(plan.versions))
    entry.version_labels.clear()
    for label, version in sorted(plan.labels.items()):
        entry.version_labels[label] = version
    return new


def current_plan(config: Any, model: str) -> ModelPlan:
    entry = _entry(config, model)
    policy = entry.model_version_policy
    versions = tuple(policy.specific.versions) if policy.WhichOneof(
        "policy_choice") == "specific" else ()
    return ModelPlan(versions, dict(entry.version_labels))


def base_path(config_file: Path, model: str) -> Path:
    """The base path of ``model`` in the config file (ServingError if unreadable/absent)."""
    return Path(_entry(read_config(config_file), model).base_path)


def labels(config_file: Path) -> dict[str, dict[str, int]] | None:
    """Every model's labels, or None when the file cannot be read."""
    try:
        config = read_config(config_file)
    except ServingError:
        return None
    return {c.name: dict(c.version_labels) for c in config.model_config_list.config}


def newest_version(base: Path) -> int | None:
    """The highest complete version directory under ``base`` (a SavedModel or a TFLite
    model in it), or None."""
    try:
        children = list(base.iterdir())
    except OSError:
        return None
    versions = [int(c.name) for c in children if c.name.isdigit() and (
        (c / "saved_model.pb").is_file() or (c / "model.tflite").is_file())]
    return max(versions) if versions else None

"""The controller keeps the model config file true to what the server serves."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tfwarden.core.errors import ServingError
from tfwarden.core.types import VersionState
from tfwarden.serving.tfserving.controller import TFServingController
from tfwarden.serving.tfserving.modelconfig import ModelPlan, current_plan, read_config

CONFIG = ('model_config_list { config { name: "m" base_path: "/models/m" '
          'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } '
          'version_labels { key: "stable" value: 1 } } }\n')


class RefusingClient:
    """A server that refuses every configuration reload."""

    name, grpc_address = "tfs", "tfs:8500"

    async def reload_config(self, config: Any) -> None:
        raise ServingError("reload refused: INVALID_ARGUMENT: no such base path")


def test_a_refused_reload_puts_the_config_file_back(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(CONFIG)
    before = read_config(path)
    controller = TFServingController(RefusingClient(), path)  # type: ignore[arg-type]
    with pytest.raises(ServingError, match="no such base path; model config file restored"):
        asyncio.run(controller.apply("m", ModelPlan((1, 2), {"stable": 1, "canary": 2})))
    assert read_config(path) == before
    assert current_plan(read_config(path), "m") == ModelPlan((1,), {"stable": 1})


class FileServer:
    """A server that polls its config file: every version AVAILABLE, labels as the file says."""

    name, grpc_address = "tfs", "tfs:8500"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def model_status(self, model: str) -> list[VersionState]:
        return [VersionState(v, "AVAILABLE") for v in range(1, 10)]

    async def label_target(self, model: str, label: str) -> int | None:
        return current_plan(read_config(self.path), model).labels.get(label)


def test_labels_tfwarden_does_not_own_are_kept_with_their_versions(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(CONFIG.replace('value: 1 } } }', 'value: 1 } '
                                   'version_labels { key: "experiment" value: 5 } } }')
                    .replace("versions: 1 }", "versions: 1 versions: 5 }"))
    controller = TFServingController(FileServer(path), path, delivery="file")  # type: ignore[arg-type]

    async def moves() -> None:
        await controller.stage_canary("m", 2)
        await controller.promote("m", 2)
        await controller.rollback("m", 1)

    asyncio.run(moves())
    assert current_plan(read_config(path), "m") == ModelPlan((1, 5), {"stable": 1,
                                                                     "experiment": 5})

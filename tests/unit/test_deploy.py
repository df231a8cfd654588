"""The shipped deployment examples stay consistent with the code."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tests.helpers import REPO
from tfwarden.daemon.config import load_config

POD = REPO / "deploy" / "kubernetes" / "tfserving-with-tfwarden.yaml"


def _docs() -> dict[str, dict]:  # type: ignore[type-arg]
    return {d["kind"]: d for d in yaml.safe_load_all(POD.read_text())}


def test_sidecar_config_is_a_valid_tfwarden_config(tmp_path: Path) -> None:
    config_text = _docs()["ConfigMap"]["data"]["tfwarden.yaml"]
    token = tmp_path / "token"
    token.write_text("t")
    config_text = config_text.replace("/var/run/secrets/tfwarden/token", str(token))
    path = tmp_path / "tfwarden.yaml"
    path.write_text(config_text)
    config = load_config(path)
    endpoint = config.serving["local"]
    assert str(endpoint.model_config_file) == "/serving-config/models.config"
    assert config.server.port == 9321


def test_both_containers_share_the_model_config_volume() -> None:
    pod = _docs()["Pod"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    serving_args = " ".join(containers["tensorflow-serving"]["args"])
    assert "--model_config_file=/serving-config/models.config" in serving_args
    assert "--model_config_file_poll_wait_seconds=" in serving_args
    for name in ("tensorflow-serving", "tfwarden"):
        mounts = {m["name"]: m["mountPath"] for m in containers[name]["volumeMounts"]}
        assert mounts["serving-config"] == "/serving-config"
    assert containers["tfwarden"]["readinessProbe"]["httpGet"]["path"] == "/-/ready"


def test_dockerfile_copies_every_stage_folder_and_the_build_files() -> None:
    dockerfile = (REPO / "deploy" / "kubernetes" / "Dockerfile").read_text()
    setup = ast.parse((REPO / "setup.py").read_text())
    stages = next(ast.literal_eval(node.value) for node in setup.body
                  if isinstance(node, ast.Assign) and node.targets[0].id == "STAGES")
    assert "COPY pyproject.toml setup.py README.md ./" in dockerfile
    for stage in stages:
        assert f"COPY {stage} {stage}" in dockerfile

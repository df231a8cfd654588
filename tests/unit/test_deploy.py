"""The shipped deployment examples stay consistent with the code."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tests.helpers import REPO
from tfwarden.daemon.config import load_config

POD = REPO / "deploy" / "kubernetes" / "tfserving-with-tfwarden.yaml"
REPLICAS = REPO / "deploy" / "kubernetes" / "tfwarden-replicas.yaml"


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


def test_replicas_share_postgres_and_the_model_config_file(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(REPLICAS.read_text()))
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    text = by[("ConfigMap", "tfwarden-replicas-config")]["data"]["tfwarden.yaml"]
    for secret, name in (("/var/run/secrets/tfwarden/token", "token"),
                         ("/var/run/secrets/tfwarden-postgres/dsn", "dsn")):
        (tmp_path / name).write_text("host=db dbname=tfwarden\n" if name == "dsn" else "t")
        text = text.replace(secret, str(tmp_path / name))
    (tmp_path / "tfwarden.yaml").write_text(text)
    config = load_config(tmp_path / "tfwarden.yaml")
    assert config.state.kind == "postgres"
    endpoint = config.serving["fleet"]  # a reload over gRPC would reach one TF Serving Pod
    assert endpoint.config_delivery == "file"
    tfwarden = by[("Deployment", "tfwarden")]
    serving = by[("Deployment", "tensorflow-serving")]
    assert 2 <= tfwarden["spec"]["replicas"] <= 3
    claims = {}
    for deployment in (tfwarden, serving):
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        claims[deployment["metadata"]["name"]] = volumes["serving-config"][
            "persistentVolumeClaim"]["claimName"]
    assert claims["tfwarden"] == claims["tensorflow-serving"]
    assert by[("PersistentVolumeClaim", claims["tfwarden"])]["spec"]["accessModes"] == \
        ["ReadWriteMany"]
    assert ("PodDisruptionBudget", "tfwarden") in by
    container = tfwarden["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(config.state.dsn_file).startswith(str(tmp_path))  # the Secret's file, read
    assert "/var/run/secrets/tfwarden-postgres" in mounts and "/serving-config" in mounts


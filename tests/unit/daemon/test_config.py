from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO, TESTDATA
from tfwarden.core.errors import ConfigError
from tfwarden.daemon.cli import main
from tfwarden.daemon.config import config_json_schema, load_config

CONFIG_DATA = TESTDATA / "config"
INVALID = sorted(CONFIG_DATA.glob("invalid-*.yaml"))
EXAMPLE = REPO / "systemd" / "tfwarden.example.yaml"


def test_there_are_invalid_cases() -> None:
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_config_gives_its_expected_error(path: Path) -> None:
    expected = Path(f"{path}.err").read_text().replace("{dir}", str(CONFIG_DATA)).splitlines()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(p) for p in caught.value.problems] == expected
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("path", INVALID[:3], ids=lambda p: p.stem)
def test_check_config_prints_each_problem_and_exits_1(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}: invalid")
    expected = Path(f"{path}.err").read_text().replace("{dir}", str(CONFIG_DATA)).splitlines()
    assert [line.strip() for line in err[1:]] == expected


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "OK" in capsys.readouterr().out
    config = load_config(EXAMPLE)
    assert config.server.listen == "127.0.0.1:9321"
    assert config.models[0].serving in config.serving


def test_missing_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "golden").mkdir()
    (tmp_path / "golden" / "m.jsonl").write_text("{}\n")
    (tmp_path / "token").write_text("s3cret\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "state_dir: state\nserver: {bearer_token_file: token, listen: '[::]:9321'}\n"
        "serving:\n  main: {kind: tfserving, grpc_address: '127.0.0.1:8500',"
        " model_config_file: models.config}\n"
        "models:\n  - {name: m, serving: main, golden_requests: golden/m.jsonl}\n"
    )
    config = load_config(cfg)
    assert config.state_dir == tmp_path / "state"
    assert config.server.bearer_token_file == tmp_path / "token"
    assert config.server.host == "::" and config.server.port == 9321
    assert config.serving["main"].model_config_file == tmp_path / "models.config"
    assert config.models[0].golden_requests == tmp_path / "golden" / "m.jsonl"
    assert config.models[0].slo.availability == 0.999
    assert config.policies.ruleset == "default"


def test_json_schema_forbids_unknown_fields() -> None:
    schema = config_json_schema()
    assert schema["additionalProperties"] is False
    assert "state_dir" in schema["required"]
    assert schema["$defs"]["ServerConfig"]["additionalProperties"] is False

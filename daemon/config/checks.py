"""Problems that span fields of a valid-looking configuration: references, uniqueness, what a
feature needs of its serving endpoint, safety rules."""

from __future__ import annotations

from tfwarden.core.errors import ConfigProblem
from tfwarden.daemon.config.sections import Config, ModelConfig
from tfwarden.serving.tfserving.settings import EndpointSettings


def cross_check(config: Config) -> list[ConfigProblem]:
    problems = _models(config) + _endpoints(config)
    for i, model in enumerate(config.models):
        endpoint = config.serving.get(model.serving)
        if endpoint is not None:
            problems += _needs(f"models[{i}]", model, endpoint)
        if model.lifecycle.router == "nginx" and config.nginx is None:
            problems.append(ConfigProblem(f"models[{i}].lifecycle.router",
                                          "router nginx needs the top-level nginx section"))
    if config.tracing.exporter == "file" and config.tracing.file is None:
        problems.append(ConfigProblem("tracing.file", "exporter file needs tracing.file"))
    problems += _memory(config)
    if not config.server.is_loopback() and config.server.bearer_token_file is None:
        problems.append(ConfigProblem(
            "server.bearer_token_file",
            f"required when server.listen ({config.server.listen}) is not a loopback address",
        ))
    return problems


def _models(config: Config) -> list[ConfigProblem]:
    problems, seen = [], set()
    for i, model in enumerate(config.models):
        if model.serving not in config.serving:
            known = ", ".join(sorted(config.serving)) or "none defined"
            problems.append(ConfigProblem(
                f"models[{i}].serving",
                f"unknown serving endpoint {model.serving!r} (defined: {known})"))
        if (model.name, model.serving) in seen:
            problems.append(ConfigProblem(
                f"models[{i}].name",
                f"model {model.name!r} is listed twice for serving endpoint {model.serving!r}"))
        seen.add((model.name, model.serving))
    return problems


def _endpoints(config: Config) -> list[ConfigProblem]:
    return [ConfigProblem(f"serving.{name}", "needs at least one of rest_url or grpc_address")
            for name, endpoint in config.serving.items()
            if endpoint.rest_url is None and endpoint.grpc_address is None]


def _needs(at: str, model: ModelConfig, endpoint: EndpointSettings) -> list[ConfigProblem]:
    """What the model's probe, drift checks and router need of its endpoint."""
    serving, probe, drift = model.serving, model.probe, model.drift
    rest, grpc = endpoint.rest_url is not None, endpoint.grpc_address is not None
    needs = [
        (probe is not None and probe.protocol == "rest" and not rest, f"{at}.probe",
         f"needs serving.{serving}.rest_url (protocol rest)"),
        (probe is not None and probe.protocol == "grpc" and not grpc, f"{at}.probe",
         f"needs serving.{serving}.grpc_address (protocol grpc)"),
        (probe is not None and probe.address == "versions" and not grpc, f"{at}.probe.address",
         f"'versions' needs serving.{serving}.grpc_address to discover versions"),
        (drift is not None and not grpc, f"{at}.drift",
         f"needs serving.{serving}.grpc_address (the capture signature comes from "
         f"GetModelMetadata)"),
        (drift is not None and drift.outputs.enabled and not rest, f"{at}.drift.outputs",
         f"needs serving.{serving}.rest_url, or enabled: false"),
        (model.lifecycle.router == "nginx" and not rest, f"{at}.lifecycle.router",
         f"router nginx needs serving.{serving}.rest_url"),
    ]
    return [ConfigProblem(path, message) for wrong, path, message in needs if wrong]


def _memory(config: Config) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    names: set[str] = set()
    for i, target in enumerate(config.memory):
        given = [k for k in ("pid", "pid_file", "cgroup") if getattr(target, k) is not None]
        if len(given) != 1:
            problems.append(ConfigProblem(
                f"memory[{i}]", f"give exactly one of pid, pid_file or cgroup (got {len(given)})"))
        if target.name in names:
            problems.append(ConfigProblem(f"memory[{i}].name", f"duplicate name {target.name!r}"))
        names.add(target.name)
    return problems

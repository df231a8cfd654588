"""tfwarden's configuration: YAML validated by pydantic models that forbid unknown fields.

``load_config(path)`` returns a frozen :class:`Config` or raises :class:`ConfigError` listing every
problem with its YAML path (``models[1].slo.availability``) and line. Relative paths in the file
are resolved against the directory of the file. The sections are the stages' own settings types
(``sections``); ``checks`` finds what spans fields.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tfwarden.core.errors import ConfigError, ConfigProblem
from tfwarden.daemon.config.checks import cross_check
from tfwarden.daemon.config.sections import (
    AlertingConfig,
    Config,
    DetectionConfig,
    LoggingConfig,
    ModelConfig,
    ServerConfig,
    TracingConfig,
)
from tfwarden.daemon.config.yamlfile import format_path, line_of, read_yaml

__all__ = ["AlertingConfig", "Config", "ConfigError", "DetectionConfig", "LoggingConfig",
           "ModelConfig", "ServerConfig", "TracingConfig", "config_json_schema", "load_config",
           "read_bearer_token", "read_ingest_tokens", "validate_config"]


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML configuration file."""
    path = Path(path)
    data, node = read_yaml(path)
    return validate_config(data, str(path), path.resolve().parent, node)


def validate_config(data: Any, source: str, base_dir: Path, node: Any = None) -> Config:
    """Validate already-parsed YAML ``data``; raise ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("", "expected a mapping at the top level")])
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(source, [_problem(error, node) for error in exc.errors()]) from None
    problems = cross_check(config)
    if problems:
        raise ConfigError(source, [ConfigProblem(p.path, p.message,
                                                 line_of(node, _parse_path(p.path)))
                                   for p in problems])
    return config


def _problem(error: Any, node: Any) -> ConfigProblem:
    loc = tuple(error["loc"])
    message = _describe(error)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_fields(loc)
        if allowed:
            message += f" (allowed: {', '.join(allowed)})"
    return ConfigProblem(format_path(loc), message, line_of(node, loc))


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and "input" in error:
        shown = repr(error["input"])
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return message


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed next to an unknown field at ``loc``, for a helpful message."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _parse_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(int(index) if index else name)
    return parts


def read_bearer_token(config: Config) -> str | None:
    """The configured bearer token, stripped, or None when write endpoints are open."""
    return _read_token(config.server.bearer_token_file, "server.bearer_token_file")


def read_ingest_tokens(config: Config) -> tuple[str, ...]:
    """The tokens the capture endpoints accept (ingest token, then the operators'); empty:
    they are open."""
    tokens = (_read_token(config.server.ingest_token_file, "server.ingest_token_file"),
              read_bearer_token(config))
    return tuple(t for t in tokens if t is not None)


def tls_context(config: Config, live: ssl.SSLContext | None = None) -> ssl.SSLContext | None:
    """The HTTPS server's TLS context (None without ``server.tls_cert_file``). With ``live``,
    the files are first loaded into a new context, then into ``live``: handshakes from now on
    use the new certificate, and a pair that does not load leaves ``live`` as it was."""
    server = config.server
    if server.tls_cert_file is None or server.tls_key_file is None:
        return None
    fresh = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    fresh.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        fresh.load_cert_chain(server.tls_cert_file, server.tls_key_file)
        if live is not None:
            live.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(str(server.tls_cert_file), [ConfigProblem(
            "server.tls_cert_file", f"certificate and key do not load as a PEM pair: {reason}")]) \
            from exc
    return live or fresh


def _read_token(token_file: Path | None, where: str) -> str | None:
    if token_file is None:
        return None
    try:
        return token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(token_file), [ConfigProblem(where, f"cannot read: {exc}")]) \
            from exc


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the configuration file, for editors."""
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tfwarden configuration"
    return schema

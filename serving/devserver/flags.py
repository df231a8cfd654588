"""Command-line flags with TensorFlow Serving's names and defaults (``main.cc``, ``server.h``).

TF Serving uses absl-style flags: ``--port=8500``, ``--port 8500``, and booleans as ``--flag``,
``--flag=true`` or ``--flag=false``. ``--bind_address`` is ours: real TF Serving listens on every
interface; the devserver defaults to 127.0.0.1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "t", "yes", "y"):
        return True
    if lowered in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Flags:
    port: int
    rest_api_port: int
    bind_address: str
    model_name: str
    model_base_path: str
    model_config_file: str
    model_config_file_poll_wait_seconds: int
    file_system_poll_wait_seconds: int
    allow_version_labels_for_unavailable_models: bool
    monitoring_config_file: str
    prefer_tflite_model: bool
    rest_api_timeout_in_ms: int
    rest_api_num_threads: int
    max_num_load_retries: int
    load_retry_interval_micros: int
    enable_model_warmup: bool
    grpc_max_threads: int
    grpc_socket_path: str
    grpc_channel_arguments: tuple[tuple[str, int | str], ...]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[no-untyped-def]
        self.exit(2, f"tfwarden devserver: error: {message} (see 'tfwarden devserver --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tfwarden devserver",
                description="A TensorFlow-Serving-compatible model server for demos and tests.")
    flag = p.add_argument
    flag("--port", type=int, default=8500, help="gRPC port (0 disables gRPC)")
    flag("--rest_api_port", type=int, default=0, help="REST port (0 disables REST)")
    flag("--bind_address", default="127.0.0.1", help="address to listen on (TF Serving: all)")
    flag("--model_name", default="default", help="model name (without --model_config_file)")
    flag("--model_base_path", default="", help="model base path (without --model_config_file)")
    flag("--model_config_file", default="", help="text-proto ModelServerConfig")
    flag("--model_config_file_poll_wait_seconds", type=int, default=0,
         help="re-read --model_config_file every N s (0: read once)")
    flag("--file_system_poll_wait_seconds", type=int, default=1,
         help="poll base paths for versions every N s (0: once)")
    flag("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True,
         default=False)
    flag("--monitoring_config_file", default="", help="text-proto MonitoringConfig")
    flag("--prefer_tflite_model", type=_bool, nargs="?", const=True, default=False,
         help="load <version>/model.tflite when present")
    flag("--rest_api_timeout_in_ms", type=int, default=30000)
    flag("--rest_api_num_threads", type=int, default=16, help="inference threads for REST")
    flag("--max_num_load_retries", type=int, default=5)
    flag("--load_retry_interval_micros", type=int, default=60_000_000)
    flag("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True)
    flag("--grpc_max_threads", type=int, default=16, help="gRPC handler threads")
    flag("--grpc_socket_path", default="",
         help="also serve gRPC on this UNIX domain socket (relative or absolute path)")
    flag("--grpc_channel_arguments", type=channel_arguments, default=(),
         help="comma-separated KEY=VALUE gRPC server arguments, e.g. "
              "grpc.max_connection_age_ms=2000 (an integer VALUE is passed as one)")
    return p


def channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """``a=1,b=x`` -> ((a, 1), (b, "x")): values that parse as integers are integers, as
    TF Serving passes them to gRPC."""
    out: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
        try:
            out.append((key.strip(), int(value)))
        except ValueError:
            out.append((key.strip(), value))
    return tuple(out)


def parse_flags(argv: Sequence[str]) -> Flags:
    args = build_parser().parse_args(list(argv))
    parser = build_parser()
    if not args.model_config_file and not args.model_base_path:
        parser.error("either --model_config_file or --model_base_path is required")
    if args.port == 0 and args.rest_api_port == 0 and not args.grpc_socket_path:
        parser.error("at least one of --port, --grpc_socket_path and --rest_api_port must be "
                     "given")
    return Flags(**vars(args))

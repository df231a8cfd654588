"""Entry point of ``tfwarden devserver``: flags -> ServerCore -> gRPC + REST servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("tfwarden.devserver")
STARTUP_WAIT_SECONDS = 120.0


def main(argv: Sequence[str]) -> int:
    from tfwarden.serving.devserver.flags import parse_flags

    flags = parse_flags(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S")
    from tfwarden.core.errors import ServingStatus

    try:
        return asyncio.run(_serve(flags))
    except ServingStatus as exc:
        print(f"tfwarden devserver: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"tfwarden devserver: {exc}", file=sys.stderr)
        return 1


def _initial_config(flags: Any) -> Any:
    from tfwarden.serving.devserver.modelconfig import read_config_file, single_model_config

    if flags.model_config_file:
        return read_config_file(flags.model_config_file)
    return single_model_config(flags.model_name, str(Path(flags.model_base_path).absolute()))


async def _serve(flags: Any) -> int:
    import grpc
    import uvicorn
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    from tfwarden.serving.devserver.core import ServerCore
    from tfwarden.serving.devserver.grpcsvc import RELOAD_FAULT_FILE, ModelService, PredictionService
    from tfwarden.serving.devserver.inference import Inference
    from tfwarden.serving.devserver.monitoring import ServingMetrics, read_monitoring_config
    from tfwarden.serving.devserver.rest import RestApi

    metrics_path = read_monitoring_config(flags.monitoring_config_file) \
        if flags.monitoring_config_file else None
    config = _initial_config(flags)
    core = ServerCore(
        metrics=ServingMetrics(), prefer_tflite=flags.prefer_tflite_model,
        allow_labels_for_unavailable=flags.allow_version_labels_for_unavailable_models,
        poll_seconds=flags.file_system_poll_wait_seconds,
        max_load_retries=flags.max_num_load_retries,
        retry_interval_seconds=flags.load_retry_interval_micros / 1e6)
    core.reload_config(config)
    core.start()
    await asyncio.to_thread(_wait_for_models, core, config)
    inference = Inference(core)

    grpc_server = None
    if flags.port or flags.grpc_socket_path:
        options: dict[str, int | str] = {"grpc.max_receive_message_length": 2**31 - 1,
                                         "grpc.max_send_message_length": 2**31 - 1,
                                         "grpc.so_reuseport": 0}
        options.update(flags.grpc_channel_arguments)  # the operator's win
        grpc_server = grpc.server(ThreadPoolExecutor(max_workers=flags.grpc_max_threads),
                                  options=list(options.items()))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(core, inference), grpc_server)
        reload_fault = Path(flags.model_config_file).parent / RELOAD_FAULT_FILE \
            if flags.model_config_file else None
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(core, reload_fault), grpc_server)
        addresses = [f"{_host(flags.bind_address)}:{flags.port}"] if flags.port else []
        if flags.grpc_socket_path:
            addresses.append(f"unix:{flags.grpc_socket_path}")
        for address in addresses:
            try:
                bound = grpc_server.add_insecure_port(address)
            except RuntimeError as exc:  # grpcio raises for a socket path it cannot bind
                raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
            if bound == 0:
                raise OSError(f"cannot listen for gRPC on {address}")
        grpc_server.start()
        for address in addresses:
            log.info("Running gRPC ModelServer at %s ...", address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    poller = _ConfigPoller(core, flags) if flags.model_config_file and \
        flags.model_config_file_poll_wait_seconds > 0 else None

    rest_app = server = None
    rest_task = None
    if flags.rest_api_port:
        rest_app = RestApi(core, inference, metrics_path=metrics_path,
                           timeout_ms=flags.rest_api_timeout_in_ms,
                           threads=flags.rest_api_num_threads)
        server = _QuietServer(uvicorn.Config(
            rest_app, host=flags.bind_address, port=flags.rest_api_port, log_config=None,
            access_log=False, lifespan="off", server_header=False, date_header=False,
            timeout_graceful_shutdown=1))
        rest_task = asyncio.create_task(server.serve())
        while not server.started:
            if rest_task.done():
                raise OSError(f"cannot listen for REST on {flags.bind_address}:{flags.rest_api_port}")
            await asyncio.sleep(0.01)
        log.info("Exporting HTTP/REST API at:%s:%d ...", flags.bind_address, flags.rest_api_port)

    await stop.wait()
    log.info("shutting down")
    if poller is not None:
        poller.stop()
    if server is not None and rest_task is not None:
        server.should_exit = True
        await rest_task
    if rest_app is not None:
        rest_app.close()
    if grpc_server is not None:
        grpc_server.stop(grace=1).wait(2)
    core.stop()
    return 0


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _wait_for_models(core: Any, config: Any) -> None:
    """Like TF Serving, serve only once the initial models have loaded (bounded here)."""
    names = [c.name for c in config.model_config_list.config]
    core._wait_available(names, STARTUP_WAIT_SECONDS)  # noqa: SLF001 - same package


class _QuietServer:
    """uvicorn.Server without its own signal handling (the devserver owns the signals)."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        return Server(config)


class _ConfigPoller:
    """Re-reads --model_config_file every --model_config_file_poll_wait_seconds."""

    def __init__(self, core: Any, flags: Any) -> None:
        self.core, self.path = core, flags.model_config_file
        self.interval = flags.model_config_file_poll_wait_seconds
        self._stop = threading.Event()
        self._last = Path(self.path).read_text()
        self._thread = threading.Thread(target=self._run, name="config-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from tfwarden.core.errors import ServingStatus
        from tfwarden.serving.devserver.modelconfig import parse_config_text

        while not self._stop.wait(self.interval):
            try:
                text = Path(self.path).read_text()
            except OSError as exc:
                log.error("cannot read model config file %s: %s", self.path, exc)
                continue
            if text == self._last:
                continue
            self._last = text
            try:
                self.core.reload_config(parse_config_text(text))
                log.info("reloaded model config file %s", self.path)
            except ServingStatus as exc:
                log.error("model config file %s rejected: %s: %s", self.path, exc.code, exc.message)

    def stop(self) -> None:
        self._stop.set()

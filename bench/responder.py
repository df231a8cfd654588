"""A minimal TF Serving stand-in for load benchmarks: cheap enough that the daemon is measured.

Speaks the parts of TF Serving's protocol that tfwarden's probes use, for any model name and
versions 1..V (all AVAILABLE):

- REST ``POST /v1/models/M[/versions/V|/labels/L]:predict``: ``{"predictions": [...]}`` with
  each instance x answered x/2 + 2 (half_plus_two), over HTTP/1.1 keep-alive; ``GET
  /v1/models/M`` (REST status). Hand-written on asyncio's Protocol so that one request costs a
  few microseconds: a framework here would make the responder, not the daemon, the bottleneck.
- gRPC ``ModelService.GetModelStatus``, ``HandleReloadConfigRequest`` (accepted, ignored),
  ``PredictionService.GetModelMetadata`` (one signature, input ``x`` DT_FLOAT [-1]) and
  ``Predict`` (output ``y``).

    python bench/responder.py --rest-port P --grpc-port Q --versions V [--workers 2]

``--workers`` forks REST acceptors on one SO_REUSEPORT socket. It prints ``ready`` when both
ports listen. Not a TF Serving: no models are loaded and nothing is validated beyond what the
probes send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
from typing import Any

PREDICT = re.compile(rb"^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:predict$")
STATUS = re.compile(rb"^/v1/models/([^/:]+)(?:/versions/(\d+))?$")


def _response(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class RestProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining; Content-Length bodies only."""

    versions = 1

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].split(b"\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            method, path, _ = head[0].split(b" ", 2)
            assert self.transport is not None
            self.transport.write(self.answer(method, path, body))

    def answer(self, method: bytes, path: bytes, body: bytes) -> bytes:
        predict = PREDICT.match(path)
        if method == b"POST" and predict:
            version = int(predict.group(2) or self.versions)
            if not 1 <= version <= self.versions:
                return _response("404 Not Found", b'{"error": "Servable not found"}')
            try:
                instances = json.loads(body)["instances"]
                out = json.dumps({"predictions": [x / 2 + 2 for x in instances]}).encode()
            except (ValueError, KeyError, TypeError):
                return _response("400 Bad Request", b'{"error": "bad request"}')
            return _response("200 OK", out)
        status = STATUS.match(path)
        if method == b"GET" and status:
            states = [{"version": str(v), "state": "AVAILABLE",
                       "status": {"error_code": "OK", "error_message": ""}}
                      for v in range(1, self.versions + 1)]
            return _response("200 OK", json.dumps({"model_version_status": states}).encode())
        return _response("404 Not Found", b'{"error": "not found"}')


def _grpc_server(port: int, versions: int) -> Any:
    import grpc

    from tfwarden.serving.tfserving import protos

    pb = protos.load()
    from tensorflow.core.protobuf import meta_graph_pb2  # the protobuf module only (stub)

    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["x"].name, signature.inputs["x"].dtype = "x:0", 1
    signature.inputs["x"].tensor_shape.dim.add(size=-1)
    signature.outputs["y"].name, signature.outputs["y"].dtype = "y:0", 1
    signature.outputs["y"].tensor_shape.dim.add(size=-1)
    signatures = pb.get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def["serving_default"].CopyFrom(signature)

    def version_of(spec: Any) -> int:
        return spec.version.value if spec.HasField("version") else versions

    class Models(pb.model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[name-defined,misc]
        async def GetModelStatus(self, request: Any, context: Any) -> Any:
            response = pb.get_model_status_pb2.GetModelStatusResponse()
            for v in range(1, versions + 1):
                status = response.model_version_status.add(version=v)
                status.state = pb.get_model_status_pb2.ModelVersionStatus.AVAILABLE
            return response

        async def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
            return pb.model_management_pb2.ReloadConfigResponse()

    class Predictions(pb.prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[name-defined,misc]
        async def GetModelMetadata(self, request: Any, context: Any) -> Any:
            response = pb.get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = version_of(request.model_spec)
            response.metadata["signature_def"].Pack(signatures)
            return response

        async def Predict(self, request: Any, context: Any) -> Any:
            response = pb.predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = version_of(request.model_spec)
            values = [x / 2 + 2 for x in request.inputs["x"].float_val]
            out = response.outputs["y"]
            out.dtype = 1
            out.tensor_shape.dim.add(size=len(values))
            out.float_val.extend(values)
            return response

    server = grpc.aio.server()
    pb.model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)
    pb.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Predictions(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    return server


async def _serve_rest(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RestProtocol, sock=sock)
    await server.serve_forever()


async def _serve_all(sock: socket.socket, grpc_port: int, versions: int) -> None:
    server = _grpc_server(grpc_port, versions)
    await server.start()
    print("ready", flush=True)
    await asyncio.gather(_serve_rest(sock), server.wait_for_termination())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rest-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--versions", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="REST acceptor processes")
    args = parser.parse_args()
    RestProtocol.versions = args.versions
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", args.rest_port))
    sock.listen(1024)
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            asyncio.run(_serve_rest(sock))
            return 0
    asyncio.run(_serve_all(sock, args.grpc_port, args.versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())

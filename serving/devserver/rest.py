"""The REST API (``/v1/models/...``) as an ASGI app, matching ``http_rest_api_handler.cc``.

Inference runs in a thread pool; the event loop only parses, routes and formats. Every
``/v1/`` request is counted in ``:tensorflow:serving:request_count`` (status calls included,
as TF Serving does); paths outside ``/v1/`` get libevent's HTML 404 page.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from google.protobuf import json_format

from tfwarden.core.errors import ServingStatus
from tfwarden.serving.devserver import jsonio
from tfwarden.serving.devserver.core import ServerCore
from tfwarden.serving.devserver.inference import Inference, Target
from tfwarden.serving.devserver.status import HTTP_STATUS

POST_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
GET_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
NOT_FOUND_HTML = (b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n"
                  b"<H1>Not Found</H1>\n</BODY></HTML>\n")
JSON = [(b"content-type", b"application/json")]


@dataclass
class Routed:
    model: str = ""
    api: str = ""


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        raise ServingStatus("INVALID_ARGUMENT", f"Failed to convert version: {text}") from None
    if number >= 2**63:
        raise ServingStatus("INVALID_ARGUMENT", f"Failed to convert version: {text}")
    return number


class RestApi:
    """ASGI application of the devserver's REST port."""

    def __init__(self, core: ServerCore, inference: Inference, *, metrics_path: str | None,
                 timeout_ms: int, threads: int) -> None:
        self.core = core
        self.inference = inference
        self.metrics_path = metrics_path
        self.timeout_seconds = timeout_ms / 1000 if timeout_ms > 0 else None
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rest")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, headers, payload = await self.handle(scope["method"], scope["path"], body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, list[Any], bytes]:
        if self.metrics_path is not None and method == "GET" and path == self.metrics_path:
            text = self.core.metrics.exposition().encode()
            return 200, [(b"content-type", b"text/plain")], text
        if not V1_PATH.fullmatch(path):
            return 404, [(b"content-type", b"text/html")], NOT_FOUND_HTML
        started = time.monotonic()
        routed = Routed()
        try:
            reply = await self._dispatch(method, path, body, routed)
            status_name, http_status = "OK", 200
        except ServingStatus as exc:
            reply, status_name = jsonio.error_response(exc.message), exc.code
            http_status = HTTP_STATUS[exc.code]
        self.core.metrics.request(routed.model, status_name, routed.api, "REST",
                                  (time.monotonic() - started) * 1e6)
        return http_status, JSON, reply.encode()

    async def _dispatch(self, method: str, path: str, body: bytes, routed: Routed) -> str:
        post = POST_PATH.fullmatch(path) if method == "POST" else None
        if post:
            name, version, label, verb = post.groups()
            routed.model, routed.api = unquote(name), verb.lower()
            target = Target(routed.model, _version(version), unquote(label) if label else None)
            return await self._in_pool(self._post, routed.api, target, body)
        get = GET_PATH.fullmatch(path) if method == "GET" else None
        if get:
            name, version, label, metadata = get.groups()
            if not name:
                raise ServingStatus("INVALID_ARGUMENT", "Missing model name in request.")
            routed.model = unquote(name)
            target = Target(routed.model, _version(version), unquote(label) if label else None)
            return self._metadata(target) if metadata else self._status(target)
        raise ServingStatus("INVALID_ARGUMENT", f"Malformed request: {method} {path}")

    async def _in_pool(self, fn: Any, *args: Any) -> str:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.pool, fn, *args)
        try:
            return await asyncio.wait_for(future, self.timeout_seconds)
        except TimeoutError:
            raise ServingStatus("DEADLINE_EXCEEDED", "Deadline Exceeded") from None

    def _post(self, verb: str, target: Target, body: bytes) -> str:
        doc = jsonio.parse_document(body)
        target = Target(target.name, target.version, target.label, jsonio.signature_name(doc))
        if verb == "predict":
            def input_types() -> dict[str, int]:
                _, signatures = self.inference.signatures(target)
                from tfwarden.serving.devserver.servables import signature_def

                sig = signature_def(signatures, target.signature, rest=True)
                return {alias: info.dtype for alias, info in sig.inputs.items()}

            inputs, row = jsonio.predict_inputs(doc, input_types)
            _, outputs = self.inference.predict(target, inputs, rest=True)
            return jsonio.predict_response(outputs, row)
        examples, context = jsonio.examples_from_json(doc, verb)
        if verb == "classify":
            _, results = self.inference.classify(target, examples, context)
            return jsonio.classify_response(results)
        _, values = self.inference.regress(target, examples, context)
        return jsonio.regress_response(values)

    def _status(self, target: Target) -> str:
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        for version in self.core.status(target.name, target.version):  # a label is ignored
            entry = response.model_version_status.add()
            entry.version, entry.state = version.number, int(version.state)
            entry.status.error_code = _code_number(version.error_code)
            entry.status.error_message = version.error_message
        return json_format.MessageToJson(response, always_print_fields_with_no_presence=True)

    def _metadata(self, target: Target) -> str:
        import json

        from tensorflow_serving.apis import get_model_metadata_pb2

        version, signatures = self.inference.signatures(target)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in signatures.items():
            sig_map.signature_def[key].CopyFrom(value)
        body = {
            "model_spec": {"name": target.name, "signature_name": "",
                           "version": str(version.number)},
            "metadata": {"signature_def": json_format.MessageToDict(
                sig_map, preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True)},
        }
        return json.dumps(body, indent=1)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _code_number(name: str) -> int:
    from tfwarden.serving.devserver.status import CODE_NUMBER

    return CODE_NUMBER.get(name, 2)

"""TF Serving's error model: a status code name plus message, mapped to gRPC and HTTP."""

from __future__ import annotations

import grpc

from tfwarden.core.errors import ServingStatus

# TF/absl code -> HTTP status, as TF Serving's http_server.cc maps them.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
CODE_NUMBER = {code.name: code.value[0] for code in grpc.StatusCode}


def not_found_latest(name: str) -> ServingStatus:
    return ServingStatus("NOT_FOUND", f"Servable not found for request: Latest({name})")


def not_found_specific(name: str, version: int) -> ServingStatus:
    return ServingStatus("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")

"""Property-based fuzzing of the daemon's HTTP API against a real `tfwarden run` (issue 11).

One daemon per module, with an operators' token, an ingest token and a managed model ``m`` on a
devserver (lifecycle, capture, drift), so model routes do real work. schemathesis drives every
operation of the daemon's own OpenAPI schema (``/api/v1/openapi.json``) in positive and negative
mode, each case sent with a valid, wrong, missing or malformed token. The schema declares no
bodies for the endpoints that read raw ones (capture, samples, Alertmanager's webhook), so
hypothesis generates those bodies, and hand-written cases cover what neither can express: JSON
nested 10,000 deep, bodies over the limit with and without Content-Length (chunked), a
Content-Length far over the limit with no body behind it, oversized numbers, each token on each
kind of write.

The contract: no answer is a 5xx; every 4xx is a JSON object with an ``"error"`` key; after each
test the daemon still answers ``/-/ready`` with 200, logged no traceback and stays under
``RSS_LIMIT_MB``. Each test fails when fewer than its minimum of cases ran; the counts are printed
(``-s``) and written to ``fuzz-summary.json`` in the module's temporary directory.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.helpers import TESTDATA, DaemonProcess, DevServer, daemon_config, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
OPERATOR_TOKEN = "operator-t0ken"
INGEST_TOKEN = "ingest-t0ken"
CAPTURE_MAX_BYTES = 64 * 1024
WEBHOOK_MAX_BYTES = 1024 * 1024  # daemon/http.py's limit for Alertmanager's webhook
RSS_LIMIT_MB = 200  # idles at ~78 MB (README, BENCHMARKS.md); ~98 MB with full reservoirs
ACTIONS = ("rollback", "promote", "pause", "resume", "approve")
AUTHORIZATION = {
    "operator": f"Bearer {OPERATOR_TOKEN}",
    "ingest": f"Bearer {INGEST_TOKEN}",
    "wrong": "Bearer not-the-token",
    "no scheme": OPERATOR_TOKEN,
    "basic": "Basic b3BlcmF0b3I6dDBrZW4=",
    "scheme only": "Bearer",
    "lowercase scheme": f"bearer {OPERATOR_TOKEN}",
    "latin-1": "Bearer t\u00f6k\u00e9n",
    "missing": None,
}
# Hypothesis examples per operation and mode; derandomized, so every run sends the same cases.
POSITIVE_EXAMPLES = 300
NEGATIVE_EXAMPLES = 300
BODY_EXAMPLES = 600
MIN_POSITIVE_CASES = 1500
MIN_NEGATIVE_CASES = 400
MIN_BODY_CASES = 1600
FUZZ_SETTINGS = settings(
    derandomize=True, database=None, deadline=None, print_blob=False,
    phases=[Phase.explicit, Phase.generate],  # nothing raises inside, so nothing to shrink
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)


@dataclass
class Target:
    daemon: DaemonProcess
    work: Path


@dataclass
class Tally:
    """Cases sent, by what was sent, and the answers that broke the contract."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def check(self, label: str, status: int, body: bytes,
              replay: Callable[[], str] | None = None) -> None:
        """Count one answer; ``replay`` (called only for a violation) says how to send it again."""
        self.cases[label] += 1
        self.statuses[status] += 1
        problem = contract_problem(status, body)
        if problem is not None:
            self.violations.append(f"{label}: {problem}\n    {replay() if replay else label}")

    def total(self) -> int:
        return sum(self.cases.values())

    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def contract_problem(status: int, body: bytes) -> str | None:
    """What is wrong with an answer: a 5xx, or a 4xx that is not JSON with an "error" key."""
    if status >= 500:
        return f"{status} {body[:300]!r}"
    if status >= 400:
        try:
            document = json.loads(body)
        except ValueError:
            return f"{status} without a JSON body: {body[:300]!r}"
        if not isinstance(document, dict) or not isinstance(document.get("error"), str):
            return f"{status} without an 'error' key: {body[:300]!r}"
    return None


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    work = tmp_path_factory.mktemp("fuzz")
    base = work / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    (work / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    (work / "operator.token").write_text(OPERATOR_TOKEN + "\n")
    (work / "ingest.token").write_text(INGEST_TOKEN + "\n")
    np.save(work / "reference.npy", np.random.default_rng(0).normal(size=(500, 1)))
    (work / "edge" / "1").mkdir(parents=True)  # a published edge version for the rollout routes
    (work / "edge" / "1" / "model.tflite").write_bytes(b"not really a model")
    (work / "edge" / "1" / "manifest.json").write_text(
        '{"file": "model.tflite", "size_bytes": 18, "sha256": "0"}')
    dev = DevServer(f"--model_config_file={work / 'models.config'}", workdir=work)
    port = free_port()
    daemon = DaemonProcess(daemon_config(
        work, port, dev, model_config_file="./models.config",
        models=[{"name": "m", "lifecycle": {"version_poll_seconds": 1},
                 "drift": {"engine": "scipy", "reference": "reference.npy", "window_rows": 100,
                           "interval_seconds": 1, "outputs": {"enabled": False}}}],
        server={"listen": f"127.0.0.1:{port}", "bearer_token_file": "operator.token",
                "ingest_token_file": "ingest.token"},
        capture={"max_body_bytes": CAPTURE_MAX_BYTES},
        edge={"models": [{"name": "m", "base_path": "edge", "rollout": {"auto_start": False}}],
              "max_body_bytes": CAPTURE_MAX_BYTES}), port)
    try:
        dev.wait_ready()
        daemon.wait_ready()
        deadline = time.monotonic() + 30
        while daemon.client.get("/api/v1/models/m").json().get("stable_version") != 1:
            assert time.monotonic() < deadline, f"model m not adopted: {daemon.stderr()[-3000:]}"
            time.sleep(0.2)
        yield Target(daemon, work)
    finally:
        if daemon.proc.poll() is None:
            daemon.terminate()
        daemon.close()
        dev.stop()


@pytest.fixture(scope="module")
def summary(target: Target) -> Iterator[dict[str, Tally]]:
    """Tallies by test, written to ``fuzz-summary.json`` and printed when the module is done."""
    tallies: dict[str, Tally] = {}
    yield tallies
    cases = {name: t.total() for name, t in tallies.items()}
    statuses: Counter[int] = sum((t.statuses for t in tallies.values()), Counter())
    record = {"cases": sum(cases.values()), "by_test": cases,
              "server_errors": sum(t.server_errors() for t in tallies.values()),
              "statuses": {str(k): v for k, v in sorted(statuses.items())},
              "rss_mb": rss_mb(target.daemon)}
    path = target.work / "fuzz-summary.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"\nfuzz summary: {record['cases']} cases {cases}, {record['server_errors']} 5xx, "
          f"statuses {record['statuses']}, daemon RSS {record['rss_mb']:.1f} MB ({path})")


def rss_mb(daemon: DaemonProcess) -> float:
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    kilobytes = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert kilobytes is not None, status
    return int(kilobytes.group(1)) / 1024


def assert_contract_kept(tally: Tally, minimum: int) -> None:
    assert not tally.violations, (f"{len(tally.violations)} of {tally.total()} answers broke "
                                  "the contract:\n" + "\n".join(tally.violations[:20]))
    assert tally.total() >= minimum, f"only {tally.total()} cases ran (minimum {minimum})"


def assert_still_healthy(daemon: DaemonProcess) -> None:
    """Running, ready, under RSS_LIMIT_MB, and no traceback in its log."""
    assert daemon.proc.poll() is None, daemon.stderr()[-3000:]
    assert daemon.client.get("/-/ready").status_code == 200
    assert rss_mb(daemon) < RSS_LIMIT_MB
    tracebacks = [line[-800:] for line in daemon.stderr().splitlines()
                  if "Traceback" in line]
    assert not tracebacks, "\n".join(tracebacks[:3])


def headers_for(auth: str) -> dict[str, bytes]:
    value = AUTHORIZATION[auth]
    return {} if value is None else {"Authorization": value.encode("latin-1")}


def model_variants(operation: schemathesis.APIOperation) -> list[dict[str, str]]:
    """Path parameters naming the managed model (and each manual action), so positive cases
    reach past the "no such model" answers."""
    names = {p.name for p in operation.path_parameters}
    if "action" in names:
        return [{"name": "m", "action": action} for action in ACTIONS]
    return [{name: "m"} for name in names & {"name", "model"}]


def cases_of(operation: schemathesis.APIOperation,
             mode: GenerationMode) -> st.SearchStrategy[schemathesis.Case]:
    strategies = [operation.as_strategy(generation_mode=mode)]
    if mode is GenerationMode.POSITIVE:
        strategies += [operation.as_strategy(generation_mode=mode, path_parameters=fixed)
                       for fixed in model_variants(operation)]
    return st.one_of(strategies)


def fuzz_operation(operation: schemathesis.APIOperation, mode: GenerationMode, examples: int,
                   session: requests.Session, base_url: str, tally: Tally) -> None:
    """Send ``examples`` cases of ``operation``, each with one of the AUTHORIZATION headers."""
    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(case=cases_of(operation, mode), auth=st.sampled_from(sorted(AUTHORIZATION)))
    def send(case: schemathesis.Case, auth: str) -> None:
        headers = headers_for(auth)
        answer = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
        tally.check(f"{operation.label} [{auth}]", answer.status_code, answer.content,
                    lambda: case.as_curl_command(headers=headers, base_url=base_url))

    send()


@pytest.mark.parametrize("mode, examples, minimum", [
    (GenerationMode.POSITIVE, POSITIVE_EXAMPLES, MIN_POSITIVE_CASES),
    (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, MIN_NEGATIVE_CASES),
], ids=["positive", "negative"])
def test_schema_cases_keep_the_contract(target: Target, summary: dict[str, Tally],
                                        mode: GenerationMode, examples: int, minimum: int) -> None:
    base_url = target.daemon.base_url
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 16, [op.label for op in operations]  # the schema as of issue 11
    tally = summary.setdefault(f"schemathesis {mode.value}", Tally())
    unsatisfiable = []
    with requests.Session() as session:
        for operation in operations:
            try:
                fuzz_operation(operation, mode, examples, session, base_url, tally)
            except Unsatisfiable:  # negative mode: only strings, which have no wrong type
                unsatisfiable.append(operation)
    sent = {label.split(" [")[0] for label in tally.cases}
    if mode is GenerationMode.POSITIVE:
        assert sent == {op.label for op in operations}, "operations without a case"
    else:  # every operation with a non-string parameter got wrong types
        assert sent >= {op.label for op in operations if len(op.query)}, sent
        assert not [op for op in unsatisfiable if len(op.query)]
    assert_contract_kept(tally, minimum)
    assert_still_healthy(target.daemon)


# -- raw bodies: what the schema cannot describe ----------------------------------------------

def json_values() -> st.SearchStrategy[Any]:
    scalars = (st.none() | st.booleans() | st.integers() | st.floats()
               | st.text(max_size=20))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=25)


def numbers() -> st.SearchStrategy[Any]:
    return st.floats() | st.integers() | st.booleans() | st.text(max_size=5)


def predict_bodies() -> st.SearchStrategy[Any]:
    batch = st.lists(numbers() | st.lists(numbers(), max_size=3), max_size=20) | json_values()
    return (st.fixed_dictionaries({"instances": batch})
            | st.fixed_dictionaries({"inputs": batch | st.fixed_dictionaries({"x": batch})})
            | st.fixed_dictionaries({"instances": batch, "inputs": batch})
            | st.fixed_dictionaries({}, optional={"signature_name": json_values(),
                                                  "instances": st.lists(
                                                      st.dictionaries(st.sampled_from(["x", "b64"]),
                                                                      numbers()), max_size=5)})
            | json_values())


def samples_bodies() -> st.SearchStrategy[Any]:
    rows = st.lists(st.lists(numbers(), max_size=3), max_size=30) | json_values()
    return st.fixed_dictionaries({"rows": rows}, optional={
        "features": st.just(["x"]) | st.lists(st.text(max_size=5), max_size=3) | json_values(),
        "version": st.just(1) | st.integers() | json_values(),
    }) | json_values()


def alertmanager_bodies() -> st.SearchStrategy[Any]:
    alert = st.fixed_dictionaries({}, optional={
        "labels": st.dictionaries(st.sampled_from(["alertname", "model", "severity"])
                                  | st.text(max_size=8), json_values(), max_size=4)
        | json_values(),
        "status": st.sampled_from(["firing", "resolved"]) | json_values(),
        "annotations": st.fixed_dictionaries({"summary": json_values()}) | json_values(),
    })
    return (st.fixed_dictionaries({"alerts": st.lists(alert | json_values(), max_size=10)},
                                  optional={"version": st.just("4"), "status": json_values()})
            | json_values())


def encoded(documents: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON text of the documents (NaN and Infinity included), or bytes that are not JSON."""
    return (documents.map(lambda d: json.dumps(d).encode())
            | st.binary(max_size=200)
            | documents.map(lambda d: json.dumps(d)[:-1].encode()))  # cut short


BODY_TARGETS = [
    ("/api/v1/capture/m", INGEST_TOKEN, predict_bodies()),
    ("/api/v1/capture/m?version=1", OPERATOR_TOKEN, predict_bodies()),
    ("/api/v1/samples/m", INGEST_TOKEN, samples_bodies()),
    ("/api/v1/alertmanager", OPERATOR_TOKEN, alertmanager_bodies()),
]


def fuzz_bodies(daemon: DaemonProcess, path: str, token: str, documents: st.SearchStrategy[Any],
                tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    @settings(FUZZ_SETTINGS, max_examples=BODY_EXAMPLES)
    @given(body=encoded(documents))
    def send(body: bytes) -> None:
        answer = daemon.client.post(path, content=body, headers=headers)
        tally.check(f"POST {path}", answer.status_code, answer.content,
                    lambda: f"POST {path} body={body[:500]!r}")

    send()


def test_raw_bodies_keep_the_contract(target: Target, summary: dict[str, Tally]) -> None:
    tally = summary.setdefault("raw bodies", Tally())
    for path, token, documents in BODY_TARGETS:
        fuzz_bodies(target.daemon, path, token, documents, tally)
    assert set(tally.cases) == {f"POST {path}" for path, _, _ in BODY_TARGETS}
    assert tally.statuses[200] > 0, tally.statuses  # some bodies were valid and taken
    assert_contract_kept(tally, MIN_BODY_CASES)
    assert_still_healthy(target.daemon)


# -- hand-written hostile requests -------------------------------------------------------------

@dataclass(frozen=True)
class Hostile:
    """One request and the statuses it may get."""

    name: str
    method: str
    path: str
    expected: frozenset[int]
    body: bytes | Callable[[], Iterable[bytes]] = b""  # a callable: sent chunked
    auth: str = "operator"
    headers: tuple[tuple[str, str], ...] = ()
    error: str = ""  # in the "error" of the answer


def nested(depth: int, inner: str = "1") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


def nested_objects(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


def chunks(total: int, size: int = 16 * 1024) -> Callable[[], Iterable[bytes]]:
    """A body of ``total`` bytes, streamed (no Content-Length), that is a JSON string."""
    def stream() -> Iterator[bytes]:
        yield b'"'
        for start in range(0, total, size):
            yield b"x" * min(size, total - start)
        yield b'"'
    return stream


def stream_of(body: bytes) -> Callable[[], Iterable[bytes]]:
    return lambda: iter([body[:5], body[5:]])


PREDICT = b'{"instances": [1.0, 2.0, 5.0]}'
SAMPLES = b'{"features": ["x"], "rows": [[1.0], [2.0]]}'
ALERTS = b'{"alerts": [{"labels": {"alertname": "X"}, "status": "firing"}]}'
OK, BAD, TOO_LARGE = frozenset({200}), frozenset({400}), frozenset({413})
WRITES = [("POST", "/-/reload", b""), ("POST", "/api/v1/models/m/pause", b""),
          ("POST", "/api/v1/alertmanager", ALERTS)]
INGEST = [("POST", "/api/v1/capture/m", PREDICT), ("POST", "/api/v1/samples/m", SAMPLES)]
BODY_ENDPOINTS = [("capture", "/api/v1/capture/m", "ingest"),
                  ("samples", "/api/v1/samples/m", "ingest"),
                  ("alertmanager", "/api/v1/alertmanager", "operator")]

HOSTILE = [
    *[Hostile(f"{what} nested {depth} deep", "POST", path, BAD, maker(depth), auth)
      for what, path, auth in BODY_ENDPOINTS
      for depth, maker in ((10_000, nested), (10_000, nested_objects), (100, nested),
                           (900, nested))],
    Hostile("capture instances nested 900 deep", "POST", "/api/v1/capture/m", BAD,
            b'{"instances": ' + nested(900) + b"}", "ingest"),
    Hostile("samples rows nested 900 deep", "POST", "/api/v1/samples/m", BAD,
            b'{"rows": ' + nested(900) + b"}", "ingest"),
    *[Hostile(f"{what} {body!r}", "POST", path, BAD, body, auth)
      for what, path, auth in BODY_ENDPOINTS
      for body in (b"", b"null", b"[]", b'"text"', b"1e999999", b"NaN", b"\xff\xfe\x00\xff",
                   b"{", b'{"instances": [1.0]}garbage', b"\x00" * 64)],
    Hostile("capture over max_body_bytes", "POST", "/api/v1/capture/m", TOO_LARGE,
            b"[" + b"1," * (CAPTURE_MAX_BYTES // 2) + b"1]", "ingest"),
    Hostile("capture chunked over max_body_bytes", "POST", "/api/v1/capture/m", TOO_LARGE,
            chunks(4 * CAPTURE_MAX_BYTES), "ingest", error="body is over"),
    Hostile("samples chunked over max_body_bytes", "POST", "/api/v1/samples/m", TOO_LARGE,
            chunks(CAPTURE_MAX_BYTES + 1), "ingest", error="body is over"),
    Hostile("alertmanager over 1 MiB", "POST", "/api/v1/alertmanager", TOO_LARGE,
            b" " * (WEBHOOK_MAX_BYTES + 1)),
    Hostile("alertmanager chunked over 1 MiB", "POST", "/api/v1/alertmanager", TOO_LARGE,
            chunks(8 * WEBHOOK_MAX_BYTES), error="body is over"),
    Hostile("capture chunked under the limit", "POST", "/api/v1/capture/m", OK,
            stream_of(PREDICT), "ingest"),
    Hostile("alertmanager chunked under the limit", "POST", "/api/v1/alertmanager", OK,
            stream_of(ALERTS)),
    Hostile("alertmanager 100,000 empty alerts", "POST", "/api/v1/alertmanager", OK,
            b'{"alerts": [' + b",".join([b"{}"] * 100_000) + b"]}"),
    Hostile("alertmanager labels of every type", "POST", "/api/v1/alertmanager", OK,
            b'{"alerts": [{"labels": {"alertname": [1, {"a": null}], "x": 1e308}, '
            b'"annotations": [], "status": {}}, 7, null, "a"]}'),
    Hostile("samples 10,000 rows", "POST", "/api/v1/samples/m", OK,
            b'{"rows": [' + b",".join([b"[0.5]"] * 10_000) + b"]}", "ingest"),
    Hostile("samples version 10**30", "POST", "/api/v1/samples/m", frozenset({404}),
            b'{"version": 1000000000000000000000000000000, "rows": [[1.0]]}', "ingest"),
    Hostile("samples version true", "POST", "/api/v1/samples/m", BAD,
            b'{"version": true, "rows": [[1.0]]}', "ingest"),
    Hostile("capture b64 that is a number", "POST", "/api/v1/capture/m", BAD,
            b'{"instances": [{"b64": 12}]}', "ingest"),
    Hostile("capture ragged instances", "POST", "/api/v1/capture/m", BAD,
            b'{"instances": [[1.0], [1.0, 2.0]]}', "ingest"),
    Hostile("capture utf-16 JSON", "POST", "/api/v1/capture/m", OK,
            PREDICT.decode().encode("utf-16"), "ingest"),
    Hostile("capture version 10**30", "POST", "/api/v1/capture/m?version=" + "1" * 31,
            frozenset({404}), PREDICT, "ingest"),
    Hostile("capture version not a number", "POST", "/api/v1/capture/m?version=one",
            frozenset({422}), PREDICT, "ingest"),
    Hostile("capture of an unknown model", "POST", "/api/v1/capture/" + "n" * 5000,
            frozenset({404}), PREDICT, "ingest"),
    Hostile("journal after 10**30", "GET", "/api/v1/journal?after=" + "9" * 30, BAD),
    Hostile("journal after -10**30", "GET", "/api/v1/journal?after=-" + "9" * 30, BAD),
    Hostile("journal after 2**63", "GET", f"/api/v1/journal?after={2**63}", BAD),
    Hostile("journal after 2**63 - 1", "GET", f"/api/v1/journal?after={2**63 - 1}", OK),
    Hostile("journal limit 10**30", "GET", "/api/v1/journal?limit=" + "9" * 30, BAD),
    Hostile("journal after 1e3", "GET", "/api/v1/journal?after=1e3", frozenset({422})),
    Hostile("journal kind with NUL", "GET", "/api/v1/journal?kind=%00&model=%ff%fe", OK),
    Hostile("model name of 10,000 characters", "GET", "/api/v1/models/" + "m" * 10_000,
            frozenset({404})),
    Hostile("model name with encoded dots and slashes", "GET",
            "/api/v1/models/..%2F..%2Fetc%2Fpasswd/drift", frozenset({404})),
    Hostile("drift of an unknown model", "GET", "/api/v1/models/%00/drift", frozenset({404})),
    *[Hostile(f"{action} m", "POST", f"/api/v1/models/m/{action}", frozenset({200, 409}))
      for action in ACTIONS],
    Hostile("drift report of m", "GET", "/api/v1/models/m/drift", OK),
    Hostile("capture stats of m", "GET", "/api/v1/models/m/capture", OK),
    Hostile("unknown action", "POST", "/api/v1/models/m/delete", frozenset({404})),
    Hostile("action on an unknown model", "POST", "/api/v1/models/nope/rollback",
            frozenset({404})),
    Hostile("GET on capture", "GET", "/api/v1/capture/m", frozenset({405})),
    Hostile("DELETE on a model", "DELETE", "/api/v1/models/m", frozenset({405})),
    Hostile("unknown endpoint", "GET", "/api/v2/models", frozenset({404})),
    *[Hostile(f"{method} {path} with the ingest token", method, path, frozenset({403}), body,
              "ingest") for method, path, body in WRITES],
    *[Hostile(f"{method} {path} with {auth} token", method, path, frozenset({401, 403}), body,
              auth) for method, path, body in WRITES + INGEST
      for auth in ("wrong", "no scheme", "basic", "scheme only", "latin-1", "missing")],
    *[Hostile(f"{path} with the operators' token", method, path, OK, body)
      for method, path, body in INGEST],
    Hostile("bearer token of 8 KiB", "POST", "/-/reload", frozenset({403}),
            auth="missing", headers=(("Authorization", "Bearer " + "x" * 8192),)),
    Hostile("two Authorization headers", "POST", "/-/reload", frozenset({200, 401, 403}),
            auth="missing", headers=(("Authorization", "Bearer wrong"),
                                     ("Authorization", f"Bearer {OPERATOR_TOKEN}"))),
    Hostile("capture as text/plain", "POST", "/api/v1/capture/m", OK, PREDICT, "ingest",
            (("Content-Type", "text/plain"),)),
    Hostile("capture with Content-Encoding gzip that is not", "POST", "/api/v1/capture/m",
            OK | BAD, PREDICT, "ingest", (("Content-Encoding", "gzip"),)),
    *[Hostile(f"OTLP {signal} {name}", "POST", f"/v1/{signal}", expected, body, "ingest",
              (("Content-Type", "application/json"), *extra))
      for signal in ("metrics", "logs")
      for name, expected, body, extra in (
          ("empty request", OK, b"{}", ()),
          ("nested 10,000 deep", BAD, nested(10_000), ()),
          ("nested 100 deep in an object", BAD, b'{"resourceMetrics": ' + nested(100) + b"}", ()),
          ("not an object", BAD, b"[1, 2]", ()),
          ("a field of the wrong type", BAD, b'{"resourceMetrics": 7, "resourceLogs": 7}', ()),
          ("gzip that is not", BAD, b"{}", (("Content-Encoding", "gzip"),)),
          ("gzip bomb", TOO_LARGE, gzip.compress(b" " * (4 * CAPTURE_MAX_BYTES)),
           (("Content-Encoding", "gzip"),)),
          ("encoding br", frozenset({415}), b"{}", (("Content-Encoding", "br"),)),
          ("chunked over max_body_bytes", TOO_LARGE, chunks(2 * CAPTURE_MAX_BYTES), ()),
          ("a trace id that is not hex", BAD,
           b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "xyz"}]}]}]}', ()),
      )],
    Hostile("OTLP metrics as text/plain", "POST", "/v1/metrics", frozenset({415}), b"{}",
            "ingest", (("Content-Type", "text/plain"),)),
    Hostile("OTLP metrics of a model not configured", "POST", "/v1/metrics", OK,
            b'{"resourceMetrics": [{"resource": {"attributes": [{"key": "ml.model.name", '
            b'"value": {"stringValue": "x"}}, {"key": "ml.model.version", "value": '
            b'{"stringValue": "1"}}]}, "scopeMetrics": [{"metrics": [{"name": '
            b'"ml.inference.duration", "unit": "ms", "histogram": {"aggregationTemporality": 1, '
            b'"dataPoints": [{"count": "1", "explicitBounds": [1], "bucketCounts": [1, 0]}]}}]}]}]}',
            "ingest", (("Content-Type", "application/json"),), error="partialSuccess"),
    *[Hostile(f"OTLP metrics with {auth} token", "POST", "/v1/metrics", frozenset({401, 403}),
              b"{}", auth, (("Content-Type", "application/json"),))
      for auth in ("wrong", "missing")],
    Hostile("OTLP preflight from an origin not allowed", "OPTIONS", "/v1/metrics",
            frozenset({403}), b"", "missing", (("Origin", "http://evil.example"),)),
    Hostile("edge stats of an unknown model", "GET", "/api/v1/edge/nope", frozenset({404})),
    Hostile("edge stats of m", "GET", "/api/v1/edge/m", OK),
    Hostile("OTLP metrics of a version in superscript digits", "POST", "/v1/metrics", OK,
            b'{"resourceMetrics": [{"resource": {"attributes": [{"key": "ml.model.name", '
            b'"value": {"stringValue": "m"}}, {"key": "ml.model.version", "value": '
            b'{"stringValue": "\\u00b2"}}, {"key": "device.id", "value": {"stringValue": "d"}}]}, '
            b'"scopeMetrics": [{"metrics": [{"name": "ml.inference.duration", "unit": "ms", '
            b'"histogram": {"aggregationTemporality": 1, "dataPoints": [{"count": "1", "sum": 2, '
            b'"explicitBounds": [1], "bucketCounts": [0, 1]}]}}]}]}]}',
            "ingest", (("Content-Type", "application/json"),)),
    Hostile("assignment without a device id", "GET", "/api/v1/edge/m/assignment", BAD,
            auth="ingest"),
    Hostile("assignment for a 10,000-character device id", "GET",
            "/api/v1/edge/m/assignment?device_id=" + "d" * 10_000, BAD, auth="ingest"),
    Hostile("assignment with 500 attributes", "GET", "/api/v1/edge/m/assignment?device_id=d&"
            + "&".join(f"a{i}={'v' * 50}" for i in range(500)), OK, auth="ingest"),
    Hostile("edge file outside the version", "GET", "/api/v1/edge/m/versions/1/..%2Fmanifest.json",
            frozenset({404}), auth="ingest"),
    Hostile("edge file of a version that is not a number", "GET",
            "/api/v1/edge/m/versions/x/model.tflite", frozenset({422}), auth="ingest"),
    Hostile("rollout action with a list body", "POST", "/api/v1/edge/m/rollout/start", BAD,
            b"[1]", "operator"),
    Hostile("rollout start of a version never published", "POST", "/api/v1/edge/m/rollout/start",
            frozenset({409}), b'{"version": 99999999999999999999}', "operator"),
    Hostile("unknown rollout action", "POST", "/api/v1/edge/m/rollout/explode", frozenset({409}),
            b"{}", "operator"),
    Hostile("rollout action with the ingest token", "POST", "/api/v1/edge/m/rollout/halt",
            frozenset({403}), b"{}", "ingest"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_request_is_refused_cleanly(target: Target, summary: dict[str, Tally],
                                            case: Hostile) -> None:
    tally = summary.setdefault("hostile", Tally())
    headers = [*headers_for(case.auth).items(), *case.headers]
    content = case.body() if callable(case.body) else case.body
    answer = target.daemon.client.request(case.method, case.path, content=content,
                                          headers=headers)
    tally.check(case.name, answer.status_code, answer.content)
    assert contract_problem(answer.status_code, answer.content) is None, answer.text[:500]
    assert answer.status_code in case.expected, answer.text[:500]
    assert case.error in answer.text, answer.text[:500]
    assert_still_healthy(target.daemon)


def test_content_length_over_the_limit_is_refused_before_the_body(target: Target,
                                                                 summary: dict[str, Tally]) -> None:
    """A declared 1 TiB body gets 413 at once: the daemon never waits for (or reads) it."""
    tally = summary.setdefault("hostile", Tally())
    for path, token in (("/api/v1/capture/m", INGEST_TOKEN),
                        ("/api/v1/alertmanager", OPERATOR_TOKEN)):
        with socket.create_connection(("127.0.0.1", target.daemon.port), timeout=5) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Length: {2**40}\r\n\r\n{{".encode())
            head, _, body = receive_answer(sock).partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        tally.check(f"POST {path} declaring 1 TiB", status, body)
        assert status == 413 and contract_problem(status, body) is None, head + body
    assert_still_healthy(target.daemon)


def receive_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("path, body", [
    ("/api/v1/capture/m", b'{"instances": [' + b"1" * 5000 + b"]}"),
    ("/api/v1/samples/m", b'{"rows": [[' + b"1" * 5000 + b"]]}"),
], ids=["capture", "samples"])
def test_oversized_integers_are_a_400(target: Target, path: str, body: bytes) -> None:
    answer = target.daemon.client.post(path, content=body,
                                       headers=headers_for("ingest"))
    assert answer.status_code == 400, answer.text


def test_oversized_integer_in_the_webhook_is_a_400(target: Target,
                                                   summary: dict[str, Tally]) -> None:
    tally = summary.setdefault("hostile", Tally())
    answer = target.daemon.client.post("/api/v1/alertmanager",
                                       content=b'{"alerts": [' + b"1" * 5000 + b"]}",
                                       headers=headers_for("operator"))
    tally.check("alertmanager 5,000-digit integer", answer.status_code, answer.content)
    assert answer.status_code == 400, answer.text
    assert_still_healthy(target.daemon)

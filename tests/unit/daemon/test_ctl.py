from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tfwarden.daemon import ctl
from tfwarden.daemon.cli import build_parser

NOW = 1_700_000_000.0
STATUS = {"model": "m", "phase": "canary_live", "stable_version": 1, "canary_version": 2,
          "previous_good": None, "weight": 50, "since": NOW - 75, "promoted_at": None,
          "paused_from": None, "last_error": "", "rejected": []}
DECISION = {"t": NOW - 5, "rule": "step-canary-weight", "model": "m", "action": "set_weight",
            "params": {"weight": 50}, "reason": "latency ok v2 vs v1", "alert": None,
            "dry_run": False, "needs_approval": False, "findings": []}
FINDING = {"t": NOW, "detector": "latency", "model": "m", "version": 2, "target": "v1",
           "verdict": "ok", "severity": "", "reason": "", "effect": {"median_ratio": 1.01},
           "evidence": {"statistic": "log_e_value", "value": -0.4213, "threshold": 4.605,
                        "samples": 120}}
MEMORY = {**FINDING, "detector": "memory", "model": "", "version": None, "target": "serving",
          "verdict": "inconclusive", "evidence": {}, "reason": "no samples"}


class FakeDaemon:
    """The daemon's read and action endpoints over an httpx.MockTransport."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.journal: list[dict[str, Any]] = [
            {"id": i, "t": NOW + i, "kind": "decision" if i % 3 else "finding", "model": "m",
             "payload": DECISION if i % 3 else FINDING} for i in range(1, 5001)]
        self.requests: list[httpx.Request] = []
        self.action_status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, query = request.url.path, request.url.params
        if request.method == "POST":
            if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                return httpx.Response(401, json={"error": "missing bearer token"})
            if self.action_status != 200:
                return httpx.Response(self.action_status, json={"error": "model 'm' has no canary"})
            return httpx.Response(200, json={**STATUS, "phase": "paused", "paused_from": "canary_live"})
        if path == "/api/v1/models":
            return httpx.Response(200, json={"models": [STATUS]})
        if path == "/api/v1/status":
            return httpx.Response(200, json={"models": [{"name": "m", "serving": "dev"},
                                                        {"name": "quiet", "serving": "dev"}]})
        if path == "/api/v1/models/m":
            return httpx.Response(200, json={**STATUS, "awaiting_approval": None,
                                             "decisions": [DECISION], "findings": [FINDING]})
        if path == "/api/v1/findings":
            return httpx.Response(200, json={"findings": [FINDING, MEMORY]})
        if path == "/api/v1/journal":
            after, limit = int(query["after"]), int(query["limit"])
            kind = query.get("kind")
            entries = [e for e in self.journal if e["id"] > after and kind in (None, e["kind"])]
            if query.get("order") == "desc":
                entries = entries[::-1]
            return httpx.Response(200, json={"entries": entries[:limit]})
        return httpx.Response(404, json={"error": f"model {path.split('/')[-1]!r} is not managed"})


def cli(daemon: Any, *argv: str) -> int:
    return ctl.run(build_parser().parse_args(list(argv)), transport=httpx.MockTransport(daemon))


def make_ctl(daemon: Any, **kwargs: Any) -> tuple[ctl.Ctl, io.StringIO]:
    out = io.StringIO()
    client = ctl.Client("http://daemon", transport=httpx.MockTransport(daemon))
    return ctl.Ctl(client, out=out, now=lambda: NOW, **kwargs), out


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFWARDEN_URL", raising=False)
    monkeypatch.delenv("TFWARDEN_TOKEN", raising=False)


# -- formatting ---------------------------------------------------------------------------------
def test_age() -> None:
    assert [ctl.age(s) for s in (-1, 42, 192, 7500, 273600)] == ["0s", "42s", "3m12s", "2h05m", "3d04h"]


def test_models_table_shows_versions_weight_since_and_last_decision() -> None:
    daemon = FakeDaemon()
    view, out = make_ctl(daemon)
    assert ctl.status(view, None) == 0
    header, row = out.getvalue().splitlines()
    assert header.split() == ["MODEL", "PHASE", "STABLE", "CANARY", "PREVIOUS", "WEIGHT", "SINCE",
                              "LAST", "DECISION"]
    assert row.split() == ["m", "canary_live", "1", "2", "-", "50%", "1m15s", "step-canary-weight:",
                           "set_weight", "weight=50", "-", "latency", "ok", "v2", "vs", "v1"]


def test_model_tree() -> None:
    detail = {**STATUS, "phase": "paused", "paused_from": "canary_live", "last_error": "reload failed",
              "rejected": [3], "decisions": [DECISION],
              "awaiting_approval": {**DECISION, "action": "promote", "needs_approval": True,
                                    "params": {}, "rule": "promote-after-last-step"},
              "findings": [FINDING]}
    assert ctl.model_tree(detail, NOW) == """\
m  paused (from canary_live) for 1m15s
├─ versions: stable 1, canary 2, previous -
├─ weight: 50%
├─ awaiting approval: promote-after-last-step: promote [awaiting approval] - latency ok v2 vs v1 \
(tfwarden approve m)
├─ last error: reload failed
├─ rejected versions: 3
├─ decisions (1 of 1, latest last)
│  └─ 5s ago  step-canary-weight: set_weight weight=50 - latency ok v2 vs v1
└─ findings
   └─ latency v2 vs v1: ok  log_e_value value=-0.4213 threshold=4.605 samples=120"""


def test_findings_table_and_model_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(FakeDaemon(), "findings") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DETECTOR", "MODEL", "VERSION", "TARGET", "VERDICT", "STATISTIC",
                                "VALUE", "THRESHOLD", "SAMPLES", "REASON"]
    assert lines[1].split() == ["latency", "m", "2", "v1", "ok", "log_e_value", "-0.4213", "4.605",
                                "120", "-"]
    assert lines[2].split() == ["memory", "-", "-", "serving", "inconclusive", "-", "-", "-", "-",
                                "no", "samples"]
    assert cli(FakeDaemon(), "findings", "m", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == {"findings": [FINDING]}
    assert ctl.finding_line(MEMORY) == "memory serving: inconclusive - no samples"


def test_journal_lines() -> None:
    done = {"id": 7, "t": NOW, "kind": "action_done", "model": "m", "payload": {
        "intent_id": 6, "model": "m", "action": "promote", "params": {}, "seconds": 1.234,
        "status": {**STATUS, "phase": "stable", "stable_version": 2, "canary_version": None,
                   "previous_good": 1, "weight": 0}}}
    assert ctl.journal_line(done).endswith(
        "action_done        m            promote in 1.23 s -> stable, stable 2, canary -, previous 1, "
        "weight 0%")
    other = {"id": 8, "t": NOW, "kind": "new_version", "model": "m", "payload": {"model": "m", "version": 3}}
    assert ctl.journal_line(other).endswith("new_version        m            version=3")
    odd = {"id": 9, "t": NOW, "kind": "action_done", "model": None,
           "payload": {"action": "promote", "seconds": "soon"}}  # not the shape it knows
    assert ctl.journal_line(odd).endswith("action_done        -            action=promote seconds=soon")


# -- the journal's last page and --follow ---------------------------------------------------------
def test_journal_shows_the_last_entries_oldest_first(capsys: pytest.CaptureFixture[str]) -> None:
    daemon = FakeDaemon()
    assert cli(daemon, "journal", "--limit", "3") == 0
    assert [int(line.split()[0]) for line in capsys.readouterr().out.splitlines()] == [4998, 4999, 5000]
    assert len(daemon.requests) == 1  # the latest page, asked for as such
    assert cli(daemon, "journal", "--kind", "finding", "--limit", "2", "-o", "json") == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [4995, 4998]
    assert cli(daemon, "journal", "--after", "10", "--limit", "2") == 0
    assert [int(line.split()[0]) for line in capsys.readouterr().out.splitlines()] == [11, 12]
    daemon.journal = daemon.journal[:2]
    assert cli(daemon, "journal") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert cli(daemon, "journal", "--kind", "alert") == 0
    assert capsys.readouterr().out == "no journal entries\n"


def test_journal_follow_prints_new_entries_until_ctrl_c() -> None:
    daemon = FakeDaemon()
    daemon.journal = daemon.journal[:3]
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            raise KeyboardInterrupt
        if len(polls) == 1:
            daemon.journal.append({"id": 9, "t": NOW, "kind": "alert", "model": "m",
                                   "payload": {"state": "firing", "alertname": "TfwardenCanaryRegressed"}})

    view, out = make_ctl(daemon, sleep=sleep)
    assert ctl.journal(view, None, None, 2, follow=True) == 0
    lines = out.getvalue().splitlines()
    assert [int(line.split()[0]) for line in lines] == [2, 3, 9]
    assert lines[-1].endswith("firing TfwardenCanaryRegressed")
    assert daemon.requests[-1].url.params["after"] == "9" and polls == [1.0, 1.0, 1.0]


# -- --watch ------------------------------------------------------------------------------------
def test_watch_redraws_keeps_going_through_a_restart_and_ctrl_c_exits_0() -> None:
    daemon = FakeDaemon()
    frames: list[float] = []

    def sleep(seconds: float) -> None:
        frames.append(seconds)
        if len(frames) == 3:
            raise KeyboardInterrupt

    answers = iter([None, httpx.ConnectError("refused"), None])

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/models":
            failure = next(answers)
            if failure is not None:
                raise failure
        return daemon(request)

    view, out = make_ctl(flaky, sleep=sleep, json_output=True)
    assert ctl.status(view, None, watch=True) == 0
    lines = out.getvalue().splitlines()
    assert frames == [2.0, 2.0, 2.0] and len(lines) == 3
    assert json.loads(lines[0])["models"][0]["model"] == "m"
    assert "cannot reach the daemon at http://daemon" in json.loads(lines[1])["error"]


# -- actions, tokens and exit codes --------------------------------------------------------------
def test_action_with_the_token_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = FakeDaemon(token="t0k")
    assert cli(daemon, "pause", "m") == 5
    assert capsys.readouterr().err == ("tfwarden: missing bearer token (HTTP 401); pass --token-file "
                                       "FILE or set TFWARDEN_TOKEN\n")
    monkeypatch.setenv("TFWARDEN_TOKEN", "t0k")
    assert cli(daemon, "pause", "m") == 0
    assert capsys.readouterr().out == ("m: pause done; now paused, stable 1, canary 2, previous -, "
                                       "weight 50%\n")
    assert daemon.requests[-1].url.path == "/api/v1/models/m/pause"
    (tmp_path / "token").write_text("wrong\n")
    assert cli(daemon, "resume", "m", "--token-file", str(tmp_path / "token")) == 5  # the file wins
    (tmp_path / "token").write_text("t0k\n")
    monkeypatch.setenv("TFWARDEN_TOKEN", "wrong")
    assert cli(daemon, "resume", "m", "--token-file", str(tmp_path / "token"), "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["phase"] == "paused"


@pytest.mark.parametrize(("status", "code"), [(409, 3), (404, 4), (401, 5), (403, 5), (500, 1),
                                              (503, 1), (400, 1)])
def test_refusals_map_to_exit_codes(status: int, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = FakeDaemon()
    daemon.action_status = status
    assert cli(daemon, "promote", "m", "--url", "http://daemon") == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model 'm' has no canary" in err and f"(HTTP {status})" in err
    if status == 409:
        assert err.startswith("tfwarden: promote m refused: ")


def test_unknown_model_is_4(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(FakeDaemon(), "status", "nosuch") == 4
    assert capsys.readouterr().err == "tfwarden: model 'nosuch' is not managed (HTTP 404)\n"


def test_status_of_an_edge_model_shows_its_rollout(capsys: pytest.CaptureFixture[str]) -> None:
    rollout = {"model": "e", "current": 1, "phase": "rolling_out", "candidate": 2, "percent": 25,
               "step": 1, "since": NOW - 30, "pinned": {"gpu/galaxy-s23": 1}, "rejected": [],
               "reason": "", "findings": [], "cohorts": {}}

    def edge(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/edge/e/rollout":
            return httpx.Response(200, json=rollout)
        return httpx.Response(404, json={"error": "model 'e' is not managed by tfwarden"})

    assert cli(edge, "status", "e") == 0
    out = capsys.readouterr().out
    assert out.startswith("e (edge)  rolling_out for ")
    assert "├─ versions: current 1, candidate 2\n" in out and "gpu/galaxy-s23 -> v1" in out


@pytest.mark.parametrize(("failure", "message"), [
    (httpx.ConnectError("[Errno 111] Connection refused"),
     "tfwarden: cannot reach the daemon at http://127.0.0.1:9321: connection refused\n"),
    (httpx.ReadTimeout("timed out"),
     "tfwarden: the daemon at http://127.0.0.1:9321 did not answer within 5 s\n")])
def test_no_answer_is_1(failure: Exception, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    def down(_: httpx.Request) -> httpx.Response:
        raise failure

    assert cli(down, "status") == 1
    assert capsys.readouterr().err == message


def test_an_answer_that_is_not_json_is_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(lambda _: httpx.Response(200, text="<html>"), "findings", "--url", "http://x:1") == 1
    assert "answered GET /api/v1/findings with something that is not JSON" in capsys.readouterr().err


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = FakeDaemon()
    monkeypatch.setenv("TFWARDEN_URL", "https://tfwarden.internal:9443/")
    assert cli(daemon, "status") == 0
    assert str(daemon.requests[0].url).startswith("https://tfwarden.internal:9443/api/v1/models")


def test_findings_and_journal_of_an_unknown_model_are_4(capsys: pytest.CaptureFixture[str]) -> None:
    daemon = FakeDaemon()
    assert cli(daemon, "findings", "nosuch") == 4
    assert capsys.readouterr().err == ("tfwarden: no model 'nosuch' is known to the daemon "
                                       "(tfwarden status lists them)\n")
    assert cli(daemon, "journal", "nosuch", "--kind", "alert") == 4
    capsys.readouterr()
    assert cli(daemon, "findings", "quiet") == 0  # configured, nothing found yet
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [["status", "--url", "127.0.0.1:9321"],
                                  ["status", "--url", "http://localhost:93x1"],
                                  ["status", "--url", "http://[::1"],
                                  ["pause", "m", "--token-file", "/nonexistent/token"],
                                  ["status", "--cacert", "/nonexistent/ca.pem"]])
def test_bad_command_line_values_are_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(FakeDaemon(), *argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tfwarden: --")


def test_an_empty_token_file_is_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "token").write_text("\n")
    assert cli(FakeDaemon(), "pause", "m", "--token-file", str(tmp_path / "token")) == 2
    assert "the file is empty" in capsys.readouterr().err


@pytest.mark.parametrize("token", ["t\u00f8ken", "two words", "line\nbreak"])
def test_a_token_that_cannot_travel_in_a_header_is_2(token: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "token").write_text(token)
    assert cli(FakeDaemon(), "status", "--token-file", str(tmp_path / "token")) == 2
    monkeypatch.setenv("TFWARDEN_TOKEN", token)
    assert cli(FakeDaemon(), "status") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "printable ASCII" in err


def test_usage_errors_are_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["promote"], ["journal", "--limit", "0"], ["status", "-o", "yaml"],
                 ["journal", "--after", "-1"],
                 ["status", "--timeout", "-1"], ["findings", "--timeout", "soon"]):
        with pytest.raises(SystemExit) as caught:
            build_parser().parse_args(argv)
        assert caught.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1

"""Operator commands: HTTP clients of a running daemon (``tfwarden status``, ``findings``,
``journal``, ``promote``, ``rollback``, ``pause``, ``resume``, ``approve``).

Reads are open; actions send ``Authorization: Bearer`` with the token from ``--token-file`` or
``$TFWARDEN_TOKEN``. Output is a table or a tree for people; ``-o json`` prints the daemon's
answer unchanged (one line per refresh with ``--watch``, one line per entry for ``journal``).

Exit codes: 0 success; 1 runtime failure (daemon unreachable, timed out, 5xx, an answer that
is not JSON); 2 usage error (bad flag, unreadable --token-file or --cacert); 3 the daemon
refused the action (409: nothing to promote...); 4 not found (404: unknown model); 5 not
authorized (401 missing token, 403 wrong token). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from tfwarden.core.errors import ApiError, ControlError, InvalidInput, TfwardenError

DEFAULT_URL = "http://127.0.0.1:9321"
WATCH_SECONDS = 2.0
FOLLOW_SECONDS = 1.0
DECISIONS_SHOWN = 5
MAX_PAGE = 1000  # the journal API's largest limit
EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_UNAUTHORIZED = 1, 2, 3, 4, 5
_BY_STATUS = {409: EXIT_REFUSED, 404: EXIT_NOT_FOUND, 401: EXIT_UNAUTHORIZED, 403: EXIT_UNAUTHORIZED}


def exit_code(exc: TfwardenError) -> int:
    """The exit status an error gives (see the module docstring)."""
    if isinstance(exc, ApiError):
        return _BY_STATUS.get(exc.status, EXIT_FAILED)
    return EXIT_USAGE if isinstance(exc, InvalidInput) else EXIT_FAILED


# -- the client ---------------------------------------------------------------------------------
class Client:
    """The daemon's API: JSON answers; refusals raise ApiError, no usable answer ControlError."""

    def __init__(self, url: str, *, token: str | None = None, cacert: str | None = None,
                 timeout: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url, self.timeout, self.has_token = url.rstrip("/"), timeout, token is not None
        try:
            httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"--url {url!r}: {exc}") from exc
        try:
            verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cacert) if cacert else True
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"--cacert {cacert}: cannot load it ({exc})") from exc
        self._http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify, transport=transport,
                                  headers={"Authorization": f"Bearer {token}"} if token else {})

    def get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, {k: v for k, v in params.items() if v is not None})

    def post(self, path: str) -> Any:
        return self._send("POST", path, {})

    def _send(self, method: str, path: str, params: dict[str, Any]) -> Any:
        try:
            response = self._http.request(method, path, params=params)
        except httpx.TimeoutException as exc:
            raise ControlError(f"the daemon at {self.url} did not answer within {self.timeout:g} s") from exc
        except httpx.TransportError as exc:
            raise ControlError(f"cannot reach the daemon at {self.url}: {_reason(exc)}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and body is not None:
            return body
        if response.is_success:
            raise ControlError(f"the daemon at {self.url} answered {method} {path} with something "
                               "that is not JSON (is this tfwarden?)")
        message = body.get("error") if isinstance(body, dict) else None
        text = f"{message or response.reason_phrase} (HTTP {response.status_code})"
        if response.status_code == 401 and not self.has_token:
            text += "; pass --token-file FILE or set TFWARDEN_TOKEN"
        raise ApiError(response.status_code, text)


def _reason(exc: Exception) -> str:
    """'[Errno 111] Connection refused' -> 'connection refused'."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip()) or type(exc).__name__
    return text[:1].lower() + text[1:]


def model_path(model: str, suffix: str = "") -> str:
    return f"/api/v1/models/{quote(model, safe='')}{suffix}"


# -- formatting ---------------------------------------------------------------------------------
def age(seconds: float) -> str:
    """42s, 3m12s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _v(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _v(value)


def _params(params: Mapping[str, Any]) -> str:
    """' weight=50 steps=[50, 100]' (a leading space), or '' without parameters."""
    return "".join(f" {k}={json.dumps(v)}" for k, v in params.items())


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in (header, *rows))


def tree(title: str, branches: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A title and its branches, each a line with optional child lines."""
    lines = [title]
    for i, (label, children) in enumerate(branches):
        last = i == len(branches) - 1
        lines.append(("└─ " if last else "├─ ") + label)
        for j, child in enumerate(children):
            lines.append(("   " if last else "│  ") + ("└─ " if j == len(children) - 1 else "├─ ")
                         + child)
    return "\n".join(lines)


def decision_line(d: Mapping[str, Any]) -> str:
    extra = " [dry run]" if d.get("dry_run") else " [awaiting approval]" if d.get("needs_approval") else ""
    return (f"{d.get('rule')}: {d.get('action')}{_params(d.get('params') or {})}{extra}"
            f"{' - ' + d['reason'] if d.get('reason') else ''}")


def finding_subject(f: Mapping[str, Any], with_model: bool = True) -> str:
    parts = [str(f.get("detector"))]
    if with_model and f.get("model"):
        parts.append(f["model"])
    if f.get("version") is not None:
        parts.append(f"v{f['version']}")
    if f.get("target"):
        parts.append(f"vs {f['target']}" if f.get("version") is not None or f.get("model") else f["target"])
    return " ".join(parts)


def finding_line(f: Mapping[str, Any], with_model: bool = True) -> str:
    evidence = f.get("evidence") or {}
    numbers = " ".join(f"{key}={_num(evidence[key])}" for key in ("value", "threshold", "samples")
                       if key in evidence)
    statistic = f"{evidence['statistic']} " if evidence.get("statistic") else ""
    severity = f" [{f['severity']}]" if f.get("severity") else ""
    reason = f" - {f['reason']}" if f.get("reason") else ""
    return f"{finding_subject(f, with_model)}: {f.get('verdict')}{severity}  {statistic}{numbers}".rstrip() \
        + reason


def versions_line(s: Mapping[str, Any]) -> str:
    return (f"stable {_v(s.get('stable_version'))}, canary {_v(s.get('canary_version'))}, "
            f"previous {_v(s.get('previous_good'))}")


def models_table(details: Sequence[Mapping[str, Any]], now: float) -> str:
    if not details:
        return "no managed models"
    rows = []
    for s in details:
        decisions = s.get("decisions") or []
        last = decision_line(decisions[-1]) if decisions else "-"
        rows.append([s["model"], s["phase"], _v(s.get("stable_version")), _v(s.get("canary_version")),
                     _v(s.get("previous_good")), f"{s.get('weight', 0)}%", _since(s, now),
                     last if len(last) <= 90 else last[:87] + "..."])
    return table(["MODEL", "PHASE", "STABLE", "CANARY", "PREVIOUS", "WEIGHT", "SINCE", "LAST DECISION"],
                 rows)


def _since(s: Mapping[str, Any], now: float) -> str:
    return age(now - s["since"]) if s.get("since") else "-"


def model_tree(s: Mapping[str, Any], now: float) -> str:
    approval = s.get("awaiting_approval")
    phase = s["phase"] + (f" (from {s['paused_from']})" if s.get("paused_from") else "")
    branches: list[tuple[str, Sequence[str]]] = [
        (f"versions: {versions_line(s)}", ()), (f"weight: {s.get('weight', 0)}%", ()),
        (f"awaiting approval: {decision_line(approval)} (tfwarden approve {s['model']})"
         if approval else "awaiting approval: -", ())]
    if s.get("last_error"):
        branches.append((f"last error: {s['last_error']}", ()))
    if s.get("rejected"):
        branches.append((f"rejected versions: {', '.join(map(str, s['rejected']))}", ()))
    decisions = list(s.get("decisions") or [])
    shown = [f"{age(now - d['t'])} ago  {decision_line(d)}" for d in decisions[-DECISIONS_SHOWN:]]
    branches.append((f"decisions ({len(shown)} of {len(decisions)}, latest last)" if decisions
                     else "decisions: -", shown))
    findings = [finding_line(f, with_model=False) for f in s.get("findings") or []]
    branches.append(("findings" if findings else "findings: -", findings))
    return tree(f"{s['model']}  {phase} for {_since(s, now)}", branches)


def rollout_tree(r: Mapping[str, Any], now: float) -> str:
    pinned = ", ".join(f"{c} -> v{v}" for c, v in (r.get("pinned") or {}).items()) or "-"
    findings = [finding_line(f, with_model=False) for f in r.get("findings") or []]
    branches: list[tuple[str, Sequence[str]]] = [
        (f"versions: current {_v(r.get('current'))}, candidate {_v(r.get('candidate'))}", ()),
        (f"devices on the candidate: {r.get('percent', 0)}% (step {r.get('step', 0)})", ()),
        (f"pinned cohorts: {pinned}", ()),
        (f"rejected versions: {', '.join(map(str, r.get('rejected') or [])) or '-'}", ()),
        (f"reason: {_v(r.get('reason'))}", ()),
        ("findings" if findings else "findings: -", findings)]
    return tree(f"{r['model']} (edge)  {r['phase']} for {_since(r, now)}", branches)


def findings_table(findings: Sequence[Mapping[str, Any]]) -> str:
    if not findings:
        return "no findings"
    rows = []
    for f in findings:
        e = f.get("evidence") or {}
        rows.append([f["detector"], _v(f.get("model")), _v(f.get("version")), _v(f.get("target")),
                     f["verdict"], _v(e.get("statistic")), _num(e.get("value")),
                     _num(e.get("threshold")), _num(e.get("samples")), _v(f.get("reason"))])
    return table(["DETECTOR", "MODEL", "VERSION", "TARGET", "VERDICT", "STATISTIC", "VALUE",
                  "THRESHOLD", "SAMPLES", "REASON"], rows)


def journal_line(entry: Mapping[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["t"]))
    payload = entry.get("payload") or {}
    try:
        summary = _summary(entry["kind"], payload)
    except (KeyError, TypeError, ValueError):  # a kind of another shape: its plain values
        summary = _plain(payload)
    return f"{entry['id']:>6}  {when}  {entry['kind']:<18} {_v(entry.get('model')):<12} {summary}".rstrip()


def _plain(p: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_v(v)}" for k, v in p.items()
                    if k != "model" and (v is None or isinstance(v, str | int | float | bool)))


def _summary(kind: str, p: Mapping[str, Any]) -> str:
    if kind == "finding":
        return finding_line(p, with_model=False)
    if kind in ("decision", "awaiting_approval"):
        return decision_line(p)
    if kind == "action_intent":
        return f"{p.get('action')}{_params(p.get('params') or {})} ({p.get('origin')})"
    if kind == "action_done":
        status = p.get("status") or {}
        return (f"{p.get('action')}{_params(p.get('params') or {})} in {p.get('seconds', 0):.2f} s -> "
                f"{status.get('phase')}, {versions_line(status)}, weight {status.get('weight', 0)}%")
    if kind == "alert":
        name = p.get("alertname") or p.get("rule") or ""
        return f"{p.get('state')} {name}{' - ' + p['summary'] if p.get('summary') else ''}"
    return _plain(p)


# -- the verbs ----------------------------------------------------------------------------------
@dataclass
class Ctl:
    """One command's client, output mode and clock."""

    client: Client
    json_output: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], float] = time.time

    def emit(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def emit_json(self, value: Any, compact: bool = False) -> None:
        self.emit(json.dumps(value, separators=(",", ":")) if compact else json.dumps(value, indent=2))


def status(ctl: Ctl, model: str | None, watch: bool = False) -> int:
    """The models' table, or one model's tree; ``watch``: redrawn every 2 s until Ctrl-C."""
    frame = 0
    try:
        while True:
            try:
                answer, text = _status_frame(ctl, model)
            except TfwardenError as exc:
                if frame == 0:
                    raise
                answer, text = {"error": str(exc)}, f"tfwarden: {exc}"  # a restart: keep watching
            if ctl.json_output:
                ctl.emit_json(answer, compact=watch)
            else:
                clear = "\x1b[H\x1b[2J" if ctl.out.isatty() else "\n"
                ctl.emit((clear if frame else "") + text)
            if not watch:
                return 0
            frame += 1
            ctl.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:  # the way out of --watch
        return 0


def _status_frame(ctl: Ctl, model: str | None) -> tuple[Any, str]:
    now = ctl.now()
    if model is None:
        listed = ctl.client.get("/api/v1/models")
        if ctl.json_output:
            return listed, ""
        details = [ctl.client.get(model_path(m["model"])) for m in listed.get("models", [])]
        return listed, models_table(details, now)
    try:
        detail = ctl.client.get(model_path(model))
    except ApiError as exc:
        if exc.status != 404:
            raise
        try:  # not a served model: maybe an edge model with a rollout
            rollout = ctl.client.get(f"/api/v1/edge/{quote(model, safe='')}/rollout")
        except ApiError:
            raise exc from None
        return rollout, rollout_tree(rollout, now)
    return detail, model_tree(detail, now)


def findings(ctl: Ctl, model: str | None) -> int:
    found = ctl.client.get("/api/v1/findings").get("findings", [])
    if model is not None:
        found = [f for f in found if model in (f.get("model"), f.get("target"))]
        if not found:
            _must_exist(ctl, model)
    if ctl.json_output:
        ctl.emit_json({"findings": found})
    else:
        ctl.emit(findings_table(found))
    return 0


def journal(ctl: Ctl, model: str | None, kind: str | None, limit: int, after: int | None = None,
            follow: bool = False) -> int:
    """The last ``limit`` entries (or the first ones after ``after``), oldest first; ``follow``:
    then new ones as they come, until Ctrl-C."""
    def page(after_id: int, count: int, order: str = "asc") -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = ctl.client.get(
            "/api/v1/journal", after=after_id, limit=count, kind=kind, model=model,
            order=order)["entries"]
        return entries

    def show(entries: list[dict[str, Any]]) -> int:
        for entry in entries:
            ctl.emit(json.dumps(entry, separators=(",", ":")) if ctl.json_output
                     else journal_line(entry))
        return int(entries[-1]["id"]) if entries else cursor

    try:
        cursor = after or 0
        first = page(cursor, limit) if after is not None else page(0, limit, "desc")[::-1]
        cursor = show(first)
        if not first and model is not None and after is None:
            _must_exist(ctl, model)
        if not follow:
            if not first and not ctl.json_output:
                ctl.emit("no journal entries")
            return 0
        while True:
            entries = page(cursor, MAX_PAGE)
            cursor = show(entries)
            if len(entries) < MAX_PAGE:
                ctl.sleep(FOLLOW_SECONDS)
    except KeyboardInterrupt:  # the way out of --follow
        return 0


def _must_exist(ctl: Ctl, model: str) -> None:
    """Nothing was found for ``model``: ApiError 404 (exit 4) unless tfwarden knows it (a
    managed model, an edge model with a rollout, or a model any configuration names)."""
    configured = {m.get("name") for m in ctl.client.get("/api/v1/status").get("models", [])}
    if model in configured:
        return
    for path in (model_path(model), f"/api/v1/edge/{quote(model, safe='')}/rollout"):
        try:
            ctl.client.get(path)
            return
        except ApiError as exc:
            if exc.status != 404:
                raise
    raise ApiError(404, f"no model {model!r} is known to the daemon (tfwarden status lists them)")


def act(ctl: Ctl, action: str, model: str) -> int:
    try:
        new = ctl.client.post(model_path(model, f"/{action}"))
    except ApiError as exc:
        if exc.status != 409:
            raise
        raise ApiError(409, f"{action} {model} refused: {exc.message}") from exc
    if ctl.json_output:
        ctl.emit_json(new)
    else:
        ctl.emit(f"{model}: {action} done; now {new.get('phase')}, {versions_line(new)}, "
                 f"weight {new.get('weight', 0)}%")
    return 0


# -- the command line ---------------------------------------------------------------------------
def read_token(token_file: str | None) -> str | None:
    """``--token-file`` wins over ``$TFWARDEN_TOKEN``; None when neither is given. A token is
    printable ASCII without spaces (it travels in an HTTP header)."""
    if token_file is None:
        token, where = os.environ.get("TFWARDEN_TOKEN", "").strip(), "$TFWARDEN_TOKEN"
        if not token:
            return None
    else:
        where = f"--token-file {token_file}"
        try:
            token = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{where}: cannot read it ({_reason(exc)})") from exc
        if not token:
            raise InvalidInput(f"{where}: the file is empty")
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise InvalidInput(f"{where}: a token is printable ASCII without spaces or line breaks")
    return token


def run(args: argparse.Namespace, transport: httpx.BaseTransport | None = None) -> int:
    """Carry out one operator command from its parsed arguments; the exit status."""
    url = args.url or os.environ.get("TFWARDEN_URL") or DEFAULT_URL
    try:
        if not re.match(r"https?://[^/]", url):
            raise InvalidInput(f"--url {url!r}: expected http://HOST:PORT or https://HOST:PORT")
        client = Client(url, token=read_token(args.token_file), cacert=args.cacert,
                        timeout=args.timeout, transport=transport)
        ctl = Ctl(client, json_output=args.output == "json")
        if args.command == "status":
            return status(ctl, args.model, watch=args.watch)
        if args.command == "findings":
            return findings(ctl, args.model)
        if args.command == "journal":
            return journal(ctl, args.model, args.kind, args.limit, args.after, follow=args.follow)
        return act(ctl, args.command, args.model)
    except TfwardenError as exc:
        print(f"tfwarden: {exc}", file=sys.stderr)
        return exit_code(exc)
    except (KeyError, TypeError, AttributeError) as exc:  # a daemon of another version
        print(f"tfwarden: the daemon's answer lacks what this command shows ({type(exc).__name__}: "
              f"{exc}); -o json prints it as it is", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `tfwarden journal | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

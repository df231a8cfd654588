"""``tfwarden demo``: the whole story on a live (dev)server, with one command.

Everything runs on 127.0.0.1 with free ports in a temporary directory removed afterwards:
1. `tfwarden devserver` serves half_plus_two version 1; tfwarden adopts it as stable and probes
   the `stable` and `canary` labels at 10 requests/s each;
2. version 2 appears with a latency fault (+40 ms): tfwarden stages it as a canary, finds the
   latency regression against stable, rolls it back and raises, then resolves, an alert (to a
   real Alertmanager when `prometheus-alertmanager` is installed, otherwise to the journal);
3. a healthy version 3 appears and is promoted through the traffic steps;
4. the edge act: 2,000 simulated devices (``tfwarden.daemon.fleet``) run an edge model; version
   2 rolls out from 5 %, one cohort is 2x slower on it and is pinned back to version 1 while the
   rollout goes on for the others.
The timeline is read from tfwarden's own API (journal, findings). The demo uses faster rule
timings than the default rule set so the story takes about two minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tfwarden.core.errors import StartupError

MODEL_DATA = Path(__file__).parent / "demo-data" / "half_plus_two" / "00000123"
LATENCY_FAULT = {"latency": {"fixed_ms": 40}}
GOLDEN = [{"request": {"instances": [1.0, 2.0, 5.0]}, "expected": {"predictions": [2.5, 3.0, 4.5]}},
          {"request": {"inputs": [0.0]}, "expected": {"outputs": [2.0]}}]
DEMO_RULES = """rules:
  - name: rollback-canary-on-regression
    when:
      status: {phase: [canary_live]}
      any:
        - {detector: latency, verdict: regression, role: canary}
        - {detector: errors, verdict: regression, role: canary}
    action: rollback
    alert: page
    guards: {cooldown_seconds: 30}
  - name: hold-canary-while-inconclusive
    when:
      status: {phase: [canary_live]}
      any: [{detector: latency, verdict: inconclusive, role: canary, for_seconds: 10}]
    action: hold
    alert: ticket
    guards: {cooldown_seconds: 60}
  - name: step-canary-weight
    when:
      status: {phase: [canary_live], weight_below: 100}
      all:
        - {detector: latency, verdict: ok, role: canary, min_samples: 100, for_seconds: 5}
        - {detector: errors, verdict: ok, role: canary, min_samples: 100, for_seconds: 5}
    action: set_weight
    params: {steps: [25, 50, 100]}
    guards: {cooldown_seconds: 5}
  - name: promote-after-last-step
    when:
      status: {phase: [canary_live], weight_at_least: 100}
      all:
        - {detector: latency, verdict: ok, role: canary, for_seconds: 5}
        - {detector: errors, verdict: ok, role: canary, for_seconds: 5}
    action: promote
    alert: info
"""
TFWARDEN_CONFIG = """\
server:
  listen: 127.0.0.1:{port}
state_dir: ./state
serving:
  dev:
    kind: tfserving
    rest_url: http://127.0.0.1:{rest}
    grpc_address: 127.0.0.1:{grpc}
    model_config_file: ./models.config
    status_interval_seconds: 0.5
models:
  - name: half_plus_two
    serving: dev
    golden_requests: ./golden.jsonl
    probe: {{address: labels, labels: [stable, canary], rate_per_second: 10}}
    lifecycle: {{version_poll_seconds: 1}}
memory:
  - {{name: devserver, pid_file: ./devserver.pid, interval_seconds: 2}}
policies: {{ruleset: ./rules.yaml}}
alerting:
{alerting}
edge:
  models:
    - name: half_plus_two_edge
      base_path: ./edge/half_plus_two_edge
      max_cohorts: 8
      rollout: {{steps: [5, 25, 100], min_step_seconds: 15, min_devices: 60,
                assignment_ttl_seconds: 1}}
      verdicts: {{min_devices: 15}}
"""
EDGE_MODEL = "half_plus_two_edge"
EDGE_SLOW_COHORT = "ml.delegate=gpu | device.model.identifier=galaxy-s23"
MODELS_CONFIG = """model_config_list {{ config {{
  name: "half_plus_two" base_path: "{base}" model_platform: "tensorflow"
  model_version_policy {{ specific {{ versions: 1 }} }}
}} }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()

    def say(self, message: str, at: float | None = None) -> None:
        elapsed = (at - self.wall0) if at is not None else time.monotonic() - self.t0
        print(f"[{elapsed:6.1f}s] {message}", flush=True)


class _Demo:
    def __init__(self, work: Path, timeline: _Timeline) -> None:
        self.work, self.timeline = work, timeline
        self.procs: list[subprocess.Popen[bytes]] = []
        self.base = work / "models" / "half_plus_two"
        self.rest, self.grpc, self.port = free_port(), free_port(), free_port()
        self.alertmanager: str | None = None
        self.after_id = 0
        self.client: httpx.Client | None = None

    def spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.work / log_name, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def prepare(self) -> None:
        shutil.copytree(MODEL_DATA, self.base / "1")
        (self.work / "models.config").write_text(MODELS_CONFIG.format(base=self.base))
        (self.work / "golden.jsonl").write_text("".join(json.dumps(g) + "\n" for g in GOLDEN))
        (self.work / "rules.yaml").write_text(DEMO_RULES)
        alerting = "  webhooks: []"
        binary = shutil.which("prometheus-alertmanager")
        if binary:
            port = free_port()
            (self.work / "alertmanager.yml").write_text(
                "route: {receiver: log}\nreceivers: [{name: log}]\n")
            self.spawn([binary, f"--config.file={self.work / 'alertmanager.yml'}",
                        f"--storage.path={self.work / 'am'}",
                        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                       "alertmanager.log")
            self.alertmanager = f"http://127.0.0.1:{port}"
            alerting = f"  alertmanager: {{url: \"{self.alertmanager}\"}}"
        self.publish_edge(1)
        (self.work / "tfwarden.yaml").write_text(TFWARDEN_CONFIG.format(
            port=self.port, rest=self.rest, grpc=self.grpc, alerting=alerting))

    def start(self) -> None:
        say = self.timeline.say
        dev = self.spawn([sys.executable, "-m", "tfwarden.daemon", "devserver", f"--port={self.grpc}",
                          f"--rest_api_port={self.rest}",
                          f"--model_config_file={self.work / 'models.config'}"], "devserver.log")
        (self.work / "devserver.pid").write_text(str(dev.pid))
        say("starting tfwarden devserver (TF Serving protocol) with half_plus_two version 1")
        _wait(lambda: "Exporting HTTP/REST API" in (self.work / "devserver.log").read_text(
            errors="replace"), dev, "devserver", self.work / "devserver.log")
        say(f"devserver ready: REST 127.0.0.1:{self.rest}, gRPC 127.0.0.1:{self.grpc}")
        daemon = self.spawn([sys.executable, "-m", "tfwarden.daemon", "run", "--config",
                             str(self.work / "tfwarden.yaml")], "tfwarden.log")
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0)
        _wait(self.ready, daemon, "tfwarden", self.work / "tfwarden.log")
        where = (f"alerts go to Alertmanager at {self.alertmanager}" if self.alertmanager
                 else "alerts go to the journal (prometheus-alertmanager is not installed)")
        say(f"tfwarden ready on http://127.0.0.1:{self.port} (RSS {_rss_mb(daemon.pid):.0f} MB, "
            f"no TensorFlow in it); {where}")
        say(f"status page: http://127.0.0.1:{self.port}/ (or: tfwarden status --url "
            f"http://127.0.0.1:{self.port})")
        self.wait(lambda: (self.status() or {}).get("stable_version") == 1, 60, "adoption")

    def ready(self) -> bool:
        try:
            return self.client is not None and self.client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def status(self) -> dict[str, Any] | None:
        assert self.client is not None
        response = self.client.get("/api/v1/models/half_plus_two")
        return response.json() if response.status_code == 200 else None

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.narrate()
            if time.monotonic() > deadline:
                raise StartupError(f"demo step '{what}' did not happen within {timeout:.0f} s")
            time.sleep(0.3)
        self.narrate()

    def new_version(self, version: int, faults: dict[str, Any] | None) -> float:
        staging = self.base.parent / f".staging-{version}"
        shutil.copytree(MODEL_DATA, staging)
        if faults:
            (staging / "devserver-faults.json").write_text(json.dumps(faults))
        staging.rename(self.base / str(version))  # never a partial version directory
        return time.time()

    def publish_edge(self, version: int) -> float:
        """A TFLite version of the edge model with its manifest, published atomically."""
        from tfwarden.daemon.fleet import publish_version  # the demo's edge act only

        publish_version(self.work / "edge" / EDGE_MODEL, version)
        return time.time()

    def edge_rollout(self) -> dict[str, Any]:
        assert self.client is not None
        answer: dict[str, Any] = self.client.get(f"/api/v1/edge/{EDGE_MODEL}/rollout").json()
        return answer

    def narrate(self) -> None:
        """Print new journal entries as timeline lines."""
        assert self.client is not None
        entries = self.client.get("/api/v1/journal", params={"after": self.after_id,
                                                             "limit": 200}).json()["entries"]
        for entry in entries:
            self.after_id = entry["id"]
            line = _describe(entry)
            if line:
                self.timeline.say(line, at=entry["t"])

    def stop(self) -> list[int | None]:
        if self.client is not None:
            self.client.close()
        return [_stop(p) for p in reversed(self.procs)]


def _describe(entry: dict[str, Any]) -> str | None:
    kind, p = entry["kind"], entry["payload"]
    if kind == "lifecycle_adopted":
        return f"tfwarden adopted half_plus_two: version {p['stable_version']} labelled stable"
    if kind == "new_version":
        return f"new version directory: version {p['version']}"
    if kind == "finding" and p.get("detector") in ("latency", "errors") and p.get("verdict") == \
            "regression":
        effect = p.get("effect", {})
        ci = effect.get("median_ratio_ci", [None, None])
        evidence = p.get("evidence", {})
        return (f"FINDING {p['detector']} regression v{p['version']} vs {p['target']}: "
                f"median {effect.get('median_ratio', float('nan')):.2f}x (95% CI "
                f"{ci[0]}-{ci[1]}), e-value e^{evidence.get('log_e_value')} over "
                f"{evidence.get('pairs')} pairs")
    if kind == "decision":
        return (f"decision {p['rule']}: {p['action']} {p['params'] or ''} "
                f"because {p['reason']}")[:240]
    if kind == "action_done":
        return f"done: {p['action']} {p['params'] or ''} in {p['seconds']:.2f} s"
    if kind == "action_failed":
        return f"FAILED: {p['action']}: {p['error']}"
    if kind == "edge_adopted":
        return f"edge model {entry['model']}: version {p['version']} is current on every device"
    if kind == "edge_action_done":
        return _describe_edge(entry["model"], p)
    if kind == "alert":
        return f"alert {p['state']}: {p.get('alertname')} {p.get('action', '')} " \
               f"severity={p.get('severity')}"
    return None


def _describe_edge(model: str, p: dict[str, Any]) -> str:
    rollout, action = p["rollout"], p["action"]
    if action == "start":
        return f"edge rollout of {model} v{rollout['candidate']} started: {rollout['percent']} % " \
               "of the devices are offered it"
    if action == "advance":
        if rollout["candidate"] is None:
            pinned = ", ".join(f"{c} keeps v{v}" for c, v in rollout["pinned"].items())
            return f"edge rollout done: v{rollout['current']} on every device" + \
                (f" but the pinned cohorts ({pinned})" if pinned else "")
        return f"edge rollout step: {rollout['percent']} % of the devices on v{rollout['candidate']}"
    if action == "rollback_cohort":
        finding = (p.get("findings") or [{}])[0]
        effect, evidence = finding.get("effect", {}), finding.get("evidence", {})
        ci = effect.get("median_ratio_ci", [None, None])
        return (f"COHORT ROLLBACK {p['params']['cohort']} pinned to v{rollout['current']} "
                f"({finding.get('detector')}: {effect.get('median_ratio')}x, 95% CI {ci[0]}-"
                f"{ci[1]}, {evidence.get('pairs')} device pairs, e-value "
                f"e^{evidence.get('log_e_value')} over threshold e^"
                f"{evidence.get('log_threshold')}); the rollout goes on for the other cohorts")
    return f"edge {action}: {rollout['reason']}"


def _wait(predicate: Any, proc: subprocess.Popen[bytes], what: str, log: Path,
          timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise StartupError(f"{what} exited with status {proc.returncode}: {' | '.join(tail)}")
        if predicate():
            return
        time.sleep(0.1)
    raise StartupError(f"{what} was not ready within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def run_demo(duration: float | None, keep_running: bool = False) -> int:
    """Run the story (bounded by ``duration`` seconds when given); return the exit status."""
    work = Path(tempfile.mkdtemp(prefix="tfwarden-demo-"))
    timeline = _Timeline()
    demo = _Demo(work, timeline)
    deadline = None if duration is None else time.monotonic() + duration
    story_done = False
    try:
        demo.prepare()
        demo.start()

        def budget(default: float) -> float:
            return default if deadline is None else max(1.0, min(default,
                                                                 deadline - time.monotonic()))

        fault_at = demo.new_version(2, LATENCY_FAULT)
        timeline.say("version 2 copied into the model's base path, with a +40 ms latency fault")
        demo.wait(lambda: (demo.status() or {}).get("phase") == "rolled_back", budget(120),
                  "rollback of version 2")
        rollback = next(e for e in reversed(_journal(demo, "action_done"))
                        if e["payload"]["action"] == "rollback")
        timeline.say(f"version 2 rolled back {rollback['t'] - fault_at:.1f} s after the fault "
                     "appeared; stable stays on version 1")
        demo.new_version(3, None)
        timeline.say("version 3 (healthy) copied into the model's base path")
        demo.wait(lambda: (demo.status() or {}).get("stable_version") == 3, budget(180),
                  "promotion of version 3")
        timeline.say("version 3 promoted through the traffic steps; version 1 kept loaded for an "
                     "instant rollback")
        _edge_act(demo, timeline, budget)
        story_done = True
        if keep_running:
            timeline.say(f"still running: http://127.0.0.1:{demo.port}/ shows the rollouts, "
                         f"tfwarden journal --url http://127.0.0.1:{demo.port} the journal")
        while keep_running and (deadline is None or time.monotonic() < deadline):
            demo.narrate()
            time.sleep(1)
    except KeyboardInterrupt:
        print()
    except StartupError as exc:
        timeline.say(f"demo stopped: {exc}")
    finally:
        codes = demo.stop()
        timeline.say("stopped tfwarden and the devserver")
        shutil.rmtree(work, ignore_errors=True)
    return 0 if story_done and all(c == 0 for c in codes[:2] if c is not None) else 1


def _edge_act(demo: _Demo, timeline: _Timeline, budget: Any) -> None:
    """A fleet of 2,000 simulated devices (OpenTelemetry SDK exporters, a LiteRT interpreter)
    runs the edge model; version 2 rolls out from 5 %; on it one cohort (gpu on galaxy-s23) is
    2x slower; that cohort is pinned back to version 1 while the rollout goes on."""
    from tfwarden.daemon.fleet import Fleet, Profile, Profiles

    profiles = Profiles(Profile(latency_ms=8),
                        {(2, EDGE_SLOW_COHORT): Profile(latency_ms=8, multiplier=2)})
    fleet = Fleet.for_daemon(f"http://127.0.0.1:{demo.port}", EDGE_MODEL, Fleet.grid(500),
                             seed=1, profile=profiles)
    with fleet:
        report = fleet.report_round()
        timeline.say(f"edge fleet: {len(fleet.devices)} devices in {len(fleet.cohorts())} "
                     f"cohorts (delegate x device) run v1 with LiteRT and report through "
                     f"OpenTelemetry (one round: {report.seconds:.1f} s)")
        published = demo.publish_edge(2)
        timeline.say("edge version 2 published (same model; the gpu/galaxy-s23 cohort will run "
                     "it 2x slower)")
        deadline = time.monotonic() + budget(240)
        slow_rounds, slow_since, pinned_after = 0, None, None  # the slow cohort's rounds on v2
        while (rollout := demo.edge_rollout()).get("current") != 2:
            if rollout.get("pinned") and pinned_after is None:
                pinned_after = slow_rounds
            if time.monotonic() > deadline:
                raise StartupError("demo step 'edge rollout of version 2' did not finish")
            started = time.time()
            fleet.report_round()
            if any(d.version == 2 and d.cohort == EDGE_SLOW_COHORT for d in fleet.devices):
                slow_rounds += 1
                slow_since = slow_since or started
            demo.narrate()
        demo.narrate()
        pin = next((e for e in _journal(demo, "edge_action_done")
                    if e["payload"]["action"] == "rollback_cohort"), None)
        if pin is not None and slow_since is not None:
            timeline.say(f"cohort {EDGE_SLOW_COHORT} pinned {pin['t'] - slow_since:.1f} s after "
                         f"its first devices started on v2, after {pinned_after or slow_rounds} "
                         f"report rounds of theirs (back to back here; at one report a minute: "
                         f"as many minutes); {pin['t'] - published:.1f} s after v2 was "
                         "published; every other device runs v2")


def _journal(demo: _Demo, kind: str) -> list[dict[str, Any]]:
    assert demo.client is not None
    entries: list[dict[str, Any]] = demo.client.get("/api/v1/journal",
                                                    params={"kind": kind, "limit": 1000}).json()["entries"]
    return entries

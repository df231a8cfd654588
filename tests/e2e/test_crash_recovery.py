"""kill -9 of tfwarden in the middle of a label move: the restarted daemon finishes the action,
and the journal shows it completed exactly once."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.test_canary_lifecycle import journal, new_version, status, wait_for
from tests.helpers import TESTDATA, DaemonProcess, DevServer, daemon_config, free_port
from tests.integration.test_controller import StableWatcher

pytestmark = pytest.mark.integration
MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"


def test_kill_9_mid_label_move_converges_exactly_once(tmp_path: Path) -> None:
    base = tmp_path / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    # (a label in the initial file would kill the server at start-up, as TF Serving's does:
    # the version is not AVAILABLE yet; tfwarden adopts the model and adds the label)
    # file delivery with a 3 s poll: a label move takes seconds, long enough to kill it midway
    dev = DevServer(f"--model_config_file={tmp_path / 'models.config'}",
                    "--model_config_file_poll_wait_seconds=3", workdir=tmp_path, rest=False)
    dev.wait_ready()
    port = free_port()
    config = daemon_config(tmp_path, port, dev, model_config_file="./models.config",
                           serving={"config_delivery": "file"},
                           models=[{"name": "m", "lifecycle": {"version_poll_seconds": 1}}])
    watcher = StableWatcher(dev.grpc_address)
    first = DaemonProcess(config, port)
    second = None
    try:
        first.wait_ready()
        wait_for(lambda: status(first).get("stable_version") == 1, 30, "adoption", first)
        watcher.start()
        watcher.wait_served(1)  # watching from before the move
        new_version(base, 2)
        deadline = time.monotonic() + 30
        while not journal(first, "action_intent"):
            assert time.monotonic() < deadline, "no action started"
            time.sleep(0.05)
        first.proc.send_signal(signal.SIGKILL)  # mid-move: intent journaled, outcome not yet
        first.proc.wait(timeout=10)
        first.close()
        assert journal_kinds(tmp_path).count("action_done") == 0

        second = DaemonProcess(config, port)
        second.wait_ready()
        wait_for(lambda: status(second).get("canary_version") == 2, 60, "recovery", second)
        intents = journal(second, "action_intent")
        done = journal(second, "action_done")
        assert len(intents) == 1 and len(done) == 1
        assert done[0]["payload"]["intent_id"] == intents[0]["id"]
        assert done[0]["payload"]["action"] == "stage_canary"
        text = (tmp_path / "models.config").read_text()
        assert '"canary"' in text and '"stable"' in text
        time.sleep(3)  # stays converged: no second staging of the same version
        assert len(journal(second, "action_intent")) == 1
    finally:
        watcher.stop.set()
        watcher.join(timeout=10)
        if second is not None:
            second.terminate()
            second.close()
        dev.stop()
    assert watcher.failures == [] and watcher.served == {1}  # the canary never served `stable`


def journal_kinds(work: Path) -> list[str]:
    import sqlite3

    db = sqlite3.connect(f"file:{work / 'state' / 'state.db'}?mode=ro", uri=True)
    try:
        return [kind for (kind,) in db.execute("SELECT kind FROM journal ORDER BY id")]
    finally:
        db.close()



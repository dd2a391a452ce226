"""The counting service end to end: suspend the client to disk, resume it elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def test_counter_survives_suspend_and_resume_in_a_new_process(tmp_path: Path) -> None:
    env = {**os.environ, "CONTINUATIONS_STATE_DIR": str(tmp_path / "state"),
           "CONTINUATIONS_RUNTIME_DIR": str(tmp_path / "run")}
    store = str(tmp_path / "client.db")
    server = subprocess.Popen(
        [sys.executable, "-m", "apps.counter", "server", "--port", "0",
         "--store", str(tmp_path / "server.db"), "--host-key", str(tmp_path / "hk")],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    client = None
    try:
        assert server.stdout is not None
        port = server.stdout.readline().split(" on ")[1].split(",")[0].rsplit(":", 1)[1]
        client = subprocess.Popen(
            [sys.executable, "-m", "apps.counter", "client", "--port", port, "--count", "400",
             "--pace", "0.005", "--store", store],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        assert client.stdout is not None
        session_id = client.stdout.readline().split()[1].rstrip(";")
        time.sleep(0.7)
        cli = [sys.executable, "-m", "continuations", "--store", store]
        done = subprocess.run([*cli, "suspend", session_id], capture_output=True, text=True,
                              env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "suspended at request" in client.stdout.readline()
        assert client.wait(timeout=20) == 0
        resumed = subprocess.run([*cli, "resume", session_id, "--foreground"],
                                 capture_output=True, text=True, env=env, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        lines = resumed.stdout.strip().splitlines()
        assert lines[0].startswith("resumed ")
        assert "resumed at request" in lines[1]
        final = json.loads(lines[-1])
        # 400 increments, each counted exactly once across two client processes.
        assert final == {"session": session_id, "acked": 400, "count": 400}
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

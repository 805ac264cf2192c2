"""`ray job submit --working-dir .` of jobs.aggregate against a head this test starts.

Token auth stays on (RAY-NOTES "Token authentication"): RAY_AUTH_MODE=token for the head and the
client, with the token created once when ~/.ray/auth_token is missing. The head runs with
`--block` in its own process group on free ports and a private temp dir, so the teardown stops
exactly the processes this test started and never another session's Ray.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from aggregate_cases import EDGE_ROWS, ITEM_CLUSTER, items_table, write_log
from aggregate_reference import reference_counts, table_counts
from conftest import free_port

from common.tables_io import write_parquet
from common.transitions import read_transitions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def auth_env() -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True,
                       capture_output=True)
    return env


@pytest.fixture
def ray_head():
    env = auth_env()
    dash = free_port()
    temp = tempfile.mkdtemp(prefix="/tmp/re2e")
    ports = {"--port": free_port(), "--dashboard-port": dash,
             "--ray-client-server-port": free_port(), "--node-manager-port": free_port(),
             "--object-manager-port": free_port(), "--dashboard-agent-listen-port": free_port(),
             "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--metrics-export-port": free_port()}
    cmd = [RAY, "start", "--head", "--block", "--num-cpus=2", "--dashboard-host=127.0.0.1",
           "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
           *[f"{k}={v}" for k, v in ports.items()]]
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    try:
        # The CLI client reads RAY_AUTH_MODE from its own environment, so it is polled as a
        # subprocess; an in-process client would keep whatever mode this process started with.
        deadline = time.time() + 180
        while subprocess.run([RAY, "job", "list", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            if time.time() > deadline or head.poll() is not None:
                raise RuntimeError("the Ray head did not come up")
            time.sleep(2)
        yield address, env
    finally:
        # The head and everything it spawned share the process group the test created.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)
        head.wait(timeout=30)


def test_submit_aggregate_job(ray_head, tmp_path):
    address, env = ray_head
    rows = write_log(str(tmp_path / "log"), EDGE_ROWS, "parquet", "timestamp_plus2")
    write_parquet(items_table(), str(tmp_path / "items.parquet"))
    root = tmp_path / "root"
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env-json", '{"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}', "--",
           "python", "-m", "jobs.aggregate", "--set", f"root={root}",
           "--set", f"inputs.interactions={tmp_path / 'log'}",
           "--set", f"inputs.items={tmp_path / 'items.parquet'}",
           "--set", "aggregate.num_partitions=2"]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in (out.stdout + out.stderr).lower()
    assert '"transitions_written": 7' in out.stdout
    assert table_counts(read_transitions(str(root))) == reference_counts(rows, ITEM_CLUSTER)
    listed = subprocess.run([RAY, "job", "list", "--address", address], env=env,
                            capture_output=True, text=True)
    assert listed.stdout.count("SUCCEEDED") >= 1 and "FAILED" not in listed.stdout

"""`ray job submit --working-dir .` of jobs.aggregate against a head this test starts.

Token auth stays on (RAY-NOTES "Token authentication"): RAY_AUTH_MODE=token for the head and the
client, with a token of the test's own in RAY_AUTH_TOKEN (whatever ~/.ray holds). The head runs with
`--block` in its own process group on free ports and a private temp dir, so the teardown stops
exactly the processes this test started and never another session's Ray.
"""

from __future__ import annotations

import os
import secrets
import shutil
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


def auth_env(token: str) -> dict:
    """Token auth on for the head, its jobs and the CLI client, with this test's own token.

    RAY_AUTH_TOKEN takes precedence over ~/.ray/auth_token, so the test neither depends on nor
    changes whatever token file (or none) this machine has, and the outer RAY_AUTH_MODE (set or
    not) does not matter.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    # The job's entrypoint `python` is looked up on the head's PATH: make it this venv's, as
    # an activated venv would (`make test` runs .venv/bin/python without activating).
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions marker (this test's unique Ray temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def ray_head():
    env = auth_env(secrets.token_hex(32))
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
        # Anything of this head that left the process group still names the private temp dir.
        for pid in pids_using(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
        assert not pids_using(temp), "processes of the test's Ray head survived the teardown"


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
    # Auth is really on: a client with another token is refused.
    stranger = subprocess.run([RAY, "job", "list", "--address", address],
                              env={**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                              capture_output=True, text=True)
    assert stranger.returncode != 0 and "Invalid authentication token" in stranger.stderr


@pytest.mark.parametrize("include_gitignore", [True, False])
def test_working_dir_upload_leaves_out_venv_and_data(include_gitignore):
    """What `--working-dir .` uploads (Ray's packager; .rayignore with or without .gitignore)."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "pkg.zip"
        create_package(str(REPO), target, include_gitignore=include_gitignore)
        names = zipfile.ZipFile(target).namelist()
        size = target.stat().st_size
    tops = {n.split("/")[0] for n in names}
    assert {"common", "jobs", "pyproject.toml"} <= tops
    assert not tops & {".venv", "data", ".git", "runs"}
    assert not [n for n in names if n.startswith("examples/data/") or "__pycache__" in n]
    assert size < 5 * 2**20

"""`ray job submit --working-dir .` of jobs.aggregate and jobs.infer against one Ray head this
module starts: exact counts, an infer run its guard refuses (FAILED), and a rag table scored by
Ray Data actors that import the project from the uploaded working dir.

Token auth stays on (RAY-NOTES "Token authentication"): RAY_AUTH_MODE=token for the head and the
client, with a token of the test's own in RAY_AUTH_TOKEN (whatever ~/.ray holds). The head runs with
`--block` in its own process group on free ports and a private temp dir, so the teardown stops
exactly the processes this test started and never another session's Ray.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from aggregate_cases import EDGE_ROWS, ITEM_CLUSTER, items_table, write_log
from aggregate_reference import reference_counts, table_counts
from infer_inputs import (
    AS_OF,
    IDS,
    assert_rows_are,
    cfg_sets,
    make_cfg,
    manifest,
    model_reference,
    published_table,
    rows_by_pair,
    write_inputs,
)
from ports import free_port

from common import storage
from common.tables_io import write_parquet
from common.transitions import read_transitions
from jobs.infer import snapshot_for

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


@pytest.fixture(scope="module")
def ray_head():
    """One head for the module's submits (starting one costs ~15 s on 2 cores)."""
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


def submit(address: str, env: dict, module: str, sets: list[str]) -> tuple[str, CompletedProcess]:
    """`ray job submit` of `python -m module --set ...` with a submission id of its own."""
    sid = f"{module.split('.')[-1]}-{secrets.token_hex(4)}"
    cmd = [RAY, "job", "submit", "--address", address, "--submission-id", sid,
           "--working-dir", str(REPO),
           "--runtime-env-json", '{"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}', "--",
           "python", "-m", module, *[a for s in sets for a in ("--set", s)]]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=500)
    return sid, out


def listed_status(address: str, env: dict, sid: str) -> str:
    """The job's status as `ray job list` gives it."""
    listed = subprocess.run([RAY, "job", "list", "--address", address], env=env,
                            capture_output=True, text=True)
    found = re.search(rf"submission_id='{sid}'.*?status=<JobStatus\.(\w+)", listed.stdout, re.S)
    assert found, listed.stdout[-3000:] + listed.stderr[-3000:]
    return found.group(1)


def summary_line(stdout: str) -> dict:
    """The job's one-line JSON result, from the logs `ray job submit` tails."""
    lines = [line for line in stdout.splitlines() if line.startswith('{"')]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1])


def test_submit_aggregate_job(ray_head, tmp_path):
    address, env = ray_head
    rows = write_log(str(tmp_path / "log"), EDGE_ROWS, "parquet", "timestamp_plus2")
    write_parquet(items_table(), str(tmp_path / "items.parquet"))
    root = tmp_path / "root"
    sid, out = submit(address, env, "jobs.aggregate",
                      [f"root={root}", f"inputs.interactions={tmp_path / 'log'}",
                       f"inputs.items={tmp_path / 'items.parquet'}", "aggregate.num_partitions=2"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in (out.stdout + out.stderr).lower()
    assert '"transitions_written": 7' in out.stdout
    assert table_counts(read_transitions(str(root))) == reference_counts(rows, ITEM_CLUSTER)
    assert listed_status(address, env, sid) == "SUCCEEDED"
    # Auth is really on: a client with another token is refused.
    stranger = subprocess.run([RAY, "job", "list", "--address", address],
                              env={**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                              capture_output=True, text=True)
    assert stranger.returncode != 0 and "Invalid authentication token" in stranger.stderr


def test_submit_infer_refused_by_its_guard_is_failed(ray_head, tmp_path):
    """jobs.infer exits 1 when a guard refuses its table (one answer per pair against a hit-rate
    floor of 0.9), so `ray job submit` exits non-zero, Ray records the job FAILED, and nothing
    is published."""
    address, env = ray_head
    root = str(tmp_path / "root")
    write_inputs(root)
    sets = cfg_sets(root, "infer.strategy=frequency", "infer.top_k=1", "guards.min_hit_rate=0.9")
    sid, out = submit(address, env, "jobs.infer", sets)
    assert out.returncode != 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = summary_line(out.stdout)
    assert not summary["published"] and summary["reason"].startswith("guard failed: hit_rate")
    assert listed_status(address, env, sid) == "FAILED"
    assert storage.read_current(root) is None


def test_submit_infer_rag_publishes_the_models_own_rows(ray_head, tmp_path, tiny_model_dir):
    """A rag table through `ray job submit`: the Ray Data actors import the project from the
    uploaded working dir and load the tiny model, and the published rows are the model's own
    top 5 on the RAG prompts, as the scorer gives them outside Ray."""
    address, env = ray_head
    root = str(tmp_path / "root")
    write_inputs(root)
    overrides = ("infer.strategy=rag", f"model.name_or_path={tiny_model_dir}",
                 "model.dtype=float32", "guards.enforce=false", "infer.llm_weight=1")
    sid, out = submit(address, env, "jobs.infer", cfg_sets(root, *overrides))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert listed_status(address, env, sid) == "SUCCEEDED"
    version = summary_line(out.stdout)["version"]
    assert storage.read_current(root) == version
    assert manifest(root, version)["strategy"] == "rag"
    rows = rows_by_pair(published_table(root, version))
    assert set(rows) == {(a, b) for a in IDS for b in IDS if a != b}
    assert all(len(r) == 5 and {s for _, s in r} == {"llm"} for r in rows.values())
    cfg = make_cfg(root, *overrides)
    ref = model_reference(cfg, tiny_model_dir, None, snapshot_for(cfg, AS_OF)[0])
    assert_rows_are(rows_by_pair(published_table(root, version), "score"), ref)


@pytest.mark.parametrize("include_gitignore", [True, False])
def test_working_dir_upload_leaves_out_venv_and_data(include_gitignore):
    """What `--working-dir .` uploads (Ray's packager; .rayignore with or without .gitignore):
    every source file of the packages the jobs, actors and workers import is in it. Checked
    here, not by a submit: on this machine the editable install quietly fills a module missing
    from the upload from the checkout."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "pkg.zip"
        create_package(str(REPO), target, include_gitignore=include_gitignore)
        names = zipfile.ZipFile(target).namelist()
        size = target.stat().st_size
    tops = {n.split("/")[0] for n in names}
    assert {"common", "jobs", "pyproject.toml"} <= tops
    sources = {str(p.relative_to(REPO)) for pkg in ("common", "jobs", "serve")
               for p in (REPO / pkg).rglob("*") if p.suffix in (".py", ".yaml", ".json")}
    assert len(sources) > 20 and sources <= set(names), sorted(sources - set(names))
    assert not tops & {".venv", "data", ".git", "runs"}
    assert not [n for n in names if n.startswith("examples/data/") or "__pycache__" in n]
    assert size < 5 * 2**20

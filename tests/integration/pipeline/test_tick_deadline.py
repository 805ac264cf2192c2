"""A hung tick, for real: `python -m jobs.pipeline tick` whose aggregate would hang on an S3
read (an endpoint that accepts connections and never answers) is stopped at
pipeline.max_tick_hours (2 s: it may still be starting Ray then, in the same step), gives back
pipeline/tick.lock and takes its local Ray with it, and the next tick runs."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from common.config import load_config
from common.storage import exists, tick_lock
from jobs.pipeline import EXIT_PAST_DEADLINE, load_state, tick

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[3]
DAY = dt.date(2026, 1, 11)  # day 10 of conftest's simulated month
DEADLINE_S = 2.0


def ray_processes(temp_dir: str, wait_s: float = 30) -> list[int]:
    """Pids of the processes whose command line names `temp_dir` (a Ray started there) still
    there after up to `wait_s`: Ray's dashboard and runtime-env agents poll for their raylet and
    go within a few seconds on an idle machine, ~12 s on a loaded one (seen here)."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if temp_dir.encode() in f.read():
                        pids.append(int(pid))
            except OSError:
                pass
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def test_a_hung_tick_is_stopped_at_its_deadline_and_the_next_tick_runs(sim_copy):
    root, overrides = sim_copy
    frequency = overrides + ["infer.strategy=frequency"]  # no model: the cheapest real tick
    silent = socket.create_server(("127.0.0.1", 0))  # connections queue, nothing answers
    # Ray's own folder, short (its socket paths have a length limit), to find what it leaves.
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{silent.getsockname()[1]}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        RAY_TMPDIR=ray_tmp,
    )
    sets = [*frequency, "inputs.interactions=s3://log/interactions",
            f"pipeline.max_tick_hours={DEADLINE_S / 3600}"]
    cmd = [sys.executable, "-m", "jobs.pipeline", "tick", "--as-of", str(DAY),
           *[a for s in sets for a in ("--set", s)]]
    try:
        out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=90)
        left = ray_processes(ray_tmp)
    finally:
        silent.close()
        for pid in ray_processes(ray_tmp, wait_s=0):  # what the stopped tick left, if anything
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert out.returncode == EXIT_PAST_DEADLINE, out.stderr[-3000:]
    assert "ran past pipeline.max_tick_hours" in out.stderr
    assert "step 'aggregate'" in out.stderr, out.stderr[-3000:]
    assert not exists(tick_lock(root))
    assert left == []  # the local Ray the tick started went with it

    # The next tick, without the hang and without a deadline, is not refused.
    r = tick(load_config(None, [*frequency, "pipeline.max_tick_hours=null"]), DAY)
    assert r["status"] == "done" and r["plan"] == {"aggregate": "new days", "refresh": "calendar"}
    assert load_state(root)["last_refresh"]["day"] == str(DAY)
    assert not exists(tick_lock(root))

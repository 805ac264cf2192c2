"""Benchmark: the whole `python -m jobs.aggregate` process vs one DuckDB query, same counts.

    python -m bench.aggregate_vs_duckdb [--events 10000000 --users 100000 --days 120]

Simulates the log once (cached under data/bench/, keyed by its size), then times, side by side in
one run, (1) one DuckDB query computing the SYSTEM.md daily novel-transition counts
(bench/duckdb_transitions.py) and (2) the aggregate job as a fresh process (Python start, Ray
start, read, shuffle, write, drift report: everything a user waits for), and checks that both
give exactly the same counts. Prints one JSON line; docs/benchmarks-aggregate.md records results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pyarrow as pa

from bench.duckdb_transitions import duckdb_transitions
from common.transitions import read_transitions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--cache", default="data/bench")
    p.add_argument("--partitions", type=int, default=None, help="aggregate.num_partitions")
    args = p.parse_args()
    sim_root = os.path.abspath(f"{args.cache}/sim-{args.events}-{args.users}-{args.days}")
    inputs = f"{sim_root}/inputs"
    sets = [f"simulate.n_events={args.events}", f"simulate.n_users={args.users}",
            f"simulate.days={args.days}", f"root={sim_root}"]
    if not os.path.exists(f"{sim_root}/DONE"):
        subprocess.run([sys.executable, "-m", "jobs.simulate",
                        *[x for s in sets for x in ("--set", s)]], check=True)
        open(f"{sim_root}/DONE", "w").close()
    load_before = os.getloadavg()

    t = time.perf_counter()
    expected = duckdb_transitions(f"{inputs}/interactions", f"{inputs}/items.parquet")
    duck_s = time.perf_counter() - t

    out_root = os.path.abspath(f"{args.cache}/aggregate-run")
    cmd = [sys.executable, "-m", "jobs.aggregate", "--set", f"root={out_root}",
           "--set", f"inputs.interactions={inputs}/interactions",
           "--set", f"inputs.items={inputs}/items.parquet", "--set", "aggregate.incremental=false"]
    if args.partitions:
        cmd += ["--set", f"aggregate.num_partitions={args.partitions}"]
    t = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    job_s = time.perf_counter() - t
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    got = read_transitions(out_root)
    keys = [("day", "ascending"), ("c1", "ascending"), ("c2", "ascending"), ("c3", "ascending")]
    got = got.sort_by(keys)
    expected = expected.cast(got.schema).sort_by(keys)
    equal = got.equals(expected)
    print(json.dumps({
        "events": summary["events_read"], "transition_rows": got.num_rows,
        "transitions": int(pa.compute.sum(got["count"]).as_py()), "equal_counts": equal,
        "duckdb_s": round(duck_s, 1), "aggregate_process_s": round(job_s, 1),
        "ratio": round(job_s / duck_s, 2), "aggregate_inner_s": summary["seconds"],
        "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }))
    if not equal:
        sys.exit("counts differ between jobs.aggregate and DuckDB")


if __name__ == "__main__":
    main()

"""Benchmark: the whole `python -m jobs.aggregate` process vs one DuckDB query, same counts.

    python -m bench.aggregate_vs_duckdb [--events 10000000 --users 100000 --days 120]
        [--repeats 3] [--set aggregate.engine=dataset]

Simulates the log once (cached under data/bench/, keyed by its size), then times, side by side in
one run, (1) one DuckDB query computing the docs/contracts.md daily novel-transition counts
(bench/duckdb_transitions.py) and (2) the aggregate job as a fresh process (Python start, Ray
start, read, shuffle, write, drift report: everything a user waits for), and checks that both
give exactly the same counts. Prints one JSON line; docs/benchmarks.md records results.
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


def run_duckdb(inputs: str) -> tuple[float, pa.Table]:
    t = time.perf_counter()
    table = duckdb_transitions(f"{inputs}/interactions", f"{inputs}/items.parquet")
    return time.perf_counter() - t, table


def run_job(inputs: str, out_root: str, sets: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "jobs.aggregate", "--set", f"root={out_root}",
           "--set", f"inputs.interactions={inputs}/interactions",
           "--set", f"inputs.items={inputs}/items.parquet", "--set", "aggregate.incremental=false"]
    for s in sets:
        cmd += ["--set", s]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"jobs.aggregate failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return time.perf_counter() - t, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--cache", default="data/bench")
    p.add_argument("--repeats", type=int, default=1,
                   help="alternate DuckDB and the job this many times; ratios per pair")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="extra jobs.aggregate key=value, e.g. aggregate.engine=dataset")
    args = p.parse_args()
    sim_root = os.path.abspath(f"{args.cache}/sim-{args.events}-{args.users}-{args.days}")
    inputs = f"{sim_root}/inputs"
    sim_sets = [f"simulate.n_events={args.events}", f"simulate.n_users={args.users}",
                f"simulate.days={args.days}", f"root={sim_root}"]
    simulate_s = None
    if not os.path.exists(f"{sim_root}/DONE"):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.simulate",
                        *[x for s in sim_sets for x in ("--set", s)]], check=True)
        simulate_s = round(time.perf_counter() - t, 1)
        open(f"{sim_root}/DONE", "w").close()
    load_before = os.getloadavg()
    out_root = os.path.abspath(f"{args.cache}/aggregate-run")
    runs = []
    for _ in range(args.repeats):
        duck_s, expected = run_duckdb(inputs)
        job_s, summary = run_job(inputs, out_root, args.sets)
        runs.append({"duckdb_s": round(duck_s, 1), "aggregate_process_s": round(job_s, 1),
                     "ratio": round(job_s / duck_s, 2), "engine": summary["engine"],
                     "phase_seconds": summary.get("phase_seconds"),
                     "loadavg_1m": round(os.getloadavg()[0], 2)})

    got = read_transitions(out_root)
    keys = [("day", "ascending"), ("c1", "ascending"), ("c2", "ascending"), ("c3", "ascending")]
    got = got.sort_by(keys)
    expected = expected.cast(got.schema).sort_by(keys)
    equal = got.equals(expected)
    ratios = sorted(r["ratio"] for r in runs)
    print(json.dumps({
        "events": summary["events_read"], "engine": summary["engine"],
        "transition_rows": got.num_rows,
        "transitions": int(pa.compute.sum(got["count"]).as_py()), "equal_counts": equal,
        "median_ratio": ratios[len(ratios) // 2], "runs": runs,
        "drift_mean_jaccard": summary["drift_mean_jaccard"],
        "simulate_s": simulate_s, "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }))
    if not equal:
        sys.exit("counts differ between jobs.aggregate and DuckDB")


if __name__ == "__main__":
    main()

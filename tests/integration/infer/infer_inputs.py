"""Tiny inputs for jobs.infer, written straight in the storage contract (no simulate/aggregate).

Eight clusters whose names the tiny test tokenizer knows, and 16 days of daily transition counts
(SYSTEM.md "Transitions": `stats/transitions/day=YYYY-MM-DD/*.parquet`) in which each pair
(c1, c2) prefers successors (c1 + c2 + j) mod 8, j = 1, 2, 3, ..., with falling counts, so the
frequency ranking of every pair is known and the held-out days are predictable.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from common import schemas, storage
from common.config import load_config
from common.tables_io import write_parquet
from common.transitions import day_dir

NAMES = ["jazz", "rock", "books", "coffee", "chess", "yoga", "hiking", "tea"]
IDS = [10 + 3 * i for i in range(len(NAMES))]  # not 0..n-1: ids and catalog positions differ
FIRST_DAY = dt.date(2026, 3, 1)
N_DAYS = 16
AS_OF = FIRST_DAY + dt.timedelta(days=N_DAYS)  # 2026-03-17: window [03-03, 03-17) with W = 14


def daily_counts(day_index: int) -> pa.Table:
    """One day's counts: per ordered pair, successors in a fixed preference order plus noise."""
    rng = np.random.default_rng(day_index)
    n = len(IDS)
    rows = []
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            prefs = [j for j in ((a + b + s) % n for s in range(1, n + 2)) if j not in (a, b)]
            for rank, j in enumerate(dict.fromkeys(prefs)):
                count = max(0, 9 - 3 * rank + int(rng.integers(0, 2)))
                if count:
                    rows.append((IDS[a], IDS[b], IDS[j], count))
    c1, c2, c3, cnt = zip(*rows, strict=True)
    day = FIRST_DAY + dt.timedelta(days=day_index)
    return pa.table(
        {
            "day": pa.array([day] * len(rows), pa.date32()),
            "c1": pa.array(c1, pa.int32()),
            "c2": pa.array(c2, pa.int32()),
            "c3": pa.array(c3, pa.int32()),
            "count": pa.array(cnt, pa.int64()),
        },
        schema=schemas.TRANSITIONS,
    )


def write_inputs(root: str) -> None:
    clusters = pa.table(
        {
            "cluster_id": pa.array(IDS, pa.int32()),
            "name": pa.array(NAMES, pa.string()),
            "description": pa.array([f"{n} fans" for n in NAMES], pa.string()),
        },
        schema=schemas.CLUSTERS,
    )
    write_parquet(clusters, storage.join(root, "inputs", "clusters.parquet"))
    for i in range(N_DAYS):
        day = FIRST_DAY + dt.timedelta(days=i)
        write_parquet(daily_counts(i), storage.join(day_dir(root, day), "part-0.parquet"))


def make_cfg(root: str, *overrides: str):
    """The job's config for the tiny inputs: small batches, one actor, guards on 2 held-out days."""
    return load_config(
        None,
        [
            f"root={root}",
            f"as_of={AS_OF}",
            "infer.top_k=5",
            "infer.batch_size=32",
            "infer.pool_size=1",
            "guards.valid_sample=16",
            *overrides,
        ],
    )

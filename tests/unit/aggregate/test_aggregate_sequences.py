"""The vectorised per-user sequence work against the plain-Python reference, without Ray."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from aggregate_cases import EDGE_DROPS, EDGE_ROWS, ITEM_CLUSTER, T0, item_of, items_table, write_log
from aggregate_reference import reference_counts, table_counts

from common.inputs import clean_events, parse_ts, read_file
from jobs.aggregate import sequence_transitions, state_events, sum_day, user_shard

REPO = Path(__file__).resolve().parents[3]


def count_files(folder: str, n_files: int, string_ids: bool, after_day=None):
    """Read, clean and count like the job does, but in one process."""
    items = items_table(string_ids)
    parts, drops = [], {}
    ext = "csv" if any(f for f in [folder] if "csv" in f) else "parquet"
    for k in range(n_files):
        table = read_file(f"{folder}/part-{k}.{ext}")
        ev, counts, _ = clean_events(table, k, items["item_id"].combine_chunks(),
                                     items["cluster_id"].to_numpy(), after_day)
        if string_ids:
            ev = ev.set_column(0, "user_id", ev["user_id"].cast(pa.string()))
        parts.append(ev)
        for key, v in counts.items():
            drops[key] = drops.get(key, 0) + v
    return pa.concat_tables(parts), drops


def finish(partial: pa.Table) -> pa.Table:
    days = sorted(set(partial["day"].to_pylist()))
    import pyarrow.compute as pc

    return pa.concat_tables([sum_day(partial.filter(pc.equal(partial["day"], d))) for d in days])


@pytest.mark.parametrize("fmt,ts_kind,string_ids", [
    ("parquet", "epoch", False),
    ("parquet", "timestamp_plus2", False),
    ("parquet", "timestamp_naive", True),
    ("csv", "iso", True),
    ("csv", "epoch", False),
])
def test_edge_cases_match_reference(tmp_path, fmt, ts_kind, string_ids):
    folder = str(tmp_path / f"log-{fmt}")
    rows = write_log(folder, EDGE_ROWS, fmt, ts_kind, string_ids, n_files=2)
    events, drops = count_files(folder, 2, string_ids)
    counts, state = sequence_transitions(events)
    got = table_counts(finish(counts))
    expected = reference_counts(rows, ITEM_CLUSTER)
    assert got == expected
    # The worked-out answer of aggregate_cases.py, independent of both implementations.
    mar1, mar2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    assert expected == {(mar1, 0, 1, 2): 1, (mar1, 1, 2, 0): 1, (mar1, 0, 3, 4): 1,
                        (mar1, 3, 4, 5): 1, (mar2, 0, 1, 2): 1, (mar2, 1, 2, 3): 1,
                        (mar1, 3, 5, 4): 1}
    assert {k: drops[k] for k in EDGE_DROPS} == EDGE_DROPS
    assert drops["events"] == len(EDGE_ROWS) - 4
    # State: the last two clusters after collapsing, per user.
    last = {str(r["user_id"]).lstrip("u"): (r["c_prev"], r["c_last"]) for r in state.to_pylist()}
    assert last == {"1": (2, 0), "2": (4, 5), "3": (None, 2), "4": (2, 3), "5": (4, 5)}


def test_state_carries_sequences_across_days():
    """Counting day 1, then day 2 from the carried state, equals counting both at once."""
    rng = np.random.default_rng(3)
    n = 4000
    users = rng.integers(0, 50, n)
    ts = (rng.integers(0, 2 * 86_400, n) + 20_000 * 86_400) * 1_000_000
    clusters = rng.integers(0, 4, n).astype(np.int32)  # few clusters: many repeats and A-B-A
    events = pa.table({"user_id": users, "ts": ts, "ord": np.arange(n), "cluster_id": clusters})
    full, _ = sequence_transitions(events)
    cut = 20_001 * 86_400 * 1_000_000
    first, state = sequence_transitions(events.filter(pa.compute.less(events["ts"], cut)))
    second, _ = sequence_transitions(pa.concat_tables([
        state_events(state), events.filter(pa.compute.greater_equal(events["ts"], cut))]))
    assert table_counts(finish(full)) == table_counts(finish(pa.concat_tables([first, second])))
    assert sum(table_counts(finish(full)).values()) > 500


def test_unparseable_and_mixed_timestamps_become_null():
    col = pa.chunked_array([["2026-03-01T00:00:00Z", "yesterday", "1772323200", None,
                             "2026-03-01T02:00:00+02:00"]])
    us = parse_ts(col).to_pylist()
    t = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000
    assert us == [t, None, t, None, t]


def test_user_shard_is_stable_and_spread():
    ints = pa.array(np.arange(10_000, dtype=np.int64))
    a, b = user_shard(ints, 8), user_shard(ints, 8)
    assert (a == b).all() and np.bincount(a, minlength=8).min() > 1000
    strings = pa.array([f"user-{i}" for i in range(10_000)])
    s = user_shard(strings, 8)
    assert (s == user_shard(strings, 8)).all() and np.bincount(s, minlength=8).min() > 1000
    # The same shards in other processes with other string-hash seeds (tasks on other workers).
    code = (
        "import pyarrow as pa; from common.sequences import user_shard; "
        "print(user_shard(pa.array([f'user-{i}' for i in range(10_000)]), 8).tolist())"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == s.tolist()


def test_ties_in_one_file_keep_row_order(tmp_path):
    rows = [(7, item_of(0), T0), (7, item_of(1), T0), (7, item_of(2), T0), (7, item_of(1), T0)]
    folder = str(tmp_path / "ties")
    written = write_log(folder, rows, "parquet", "epoch", n_files=1)
    events, _ = count_files(folder, 1, False)
    counts, _ = sequence_transitions(events)
    assert table_counts(finish(counts)) == reference_counts(written, ITEM_CLUSTER) == {
        (dt.date(2026, 3, 1), 0, 1, 2): 1}

"""The fast engine of jobs.aggregate: a two-stage hash shuffle written as plain Ray tasks.

Why beside Ray Data's groupby (engine `dataset`): on 10M events and 2 cores Ray Data's
shuffles add overhead to numpy work that itself takes seconds (docs/benchmarks.md:
~2.4-3x one DuckDB query with Ray Data, ~1.2-2x here). Here the same dataflow is three waves of
tasks whose outputs stay in the object store and are passed by reference:

  read  (one task per run of files): clean (days in (after_day, before_day) only), then split by
                                     user shard and by day bucket
  shard (one task per user shard):   sequence work of common/sequences.py, write the state file,
                                     split the partial counts by day bucket
  write (one task per day bucket):   sum the partial counts of its days, write one file per day;
                                     return the days written (transitions, and item counts apart)

Only counters and a per-day summary reach the driver; each user's events meet in one shard task.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import storage
from common.cli import InputError
from common.inputs import file_batches, list_input_files, merge_counts, read_batch
from common.item_counts import items_dir
from common.sequences import (
    sequence_transitions,
    split_by,
    state_events,
    sum_day,
    sum_items_day,
    user_shard,
    write_day_file,
)
from common.tables_io import write_parquet


def _to_users(table: pa.Table, user_type: pa.DataType) -> pa.Table:
    if table["user_id"].type == user_type:
        return table
    return table.set_column(0, "user_id", pc.cast(table["user_id"], user_type))


def _read_split(batch, items_table, after_day, before_day, env, n, q):
    counts, events, items = read_batch(batch, items_table, after_day, env, before_day)
    if events is None:
        return [counts] + [None] * (n + q)
    by_user = split_by(events, user_shard(events["user_id"], n), n)
    by_day = split_by(items, (items["day"].to_numpy() % q).astype(np.int64), q)
    return [counts, *by_user, *by_day]


def _reshard(n, *pieces):
    """Integer-id pieces of one read task re-split after the log turned out to mix in text ids."""
    events = _to_users(pa.concat_tables(pieces), pa.string())
    parts = split_by(events, user_shard(events["user_id"], n), n)
    return parts if n > 1 else parts[0]


def _state_split(uri, n, user_type, env):
    os.environ.update(env)
    fs, path = storage.arrow_fs_for(uri)
    import pyarrow.parquet as pq

    events = _to_users(state_events(pq.read_table(path, filesystem=fs)), user_type)
    parts = split_by(events, user_shard(events["user_id"], n), n)
    return parts if n > 1 else parts[0]


def _shard(k, state_dir, env, q, user_type, *pieces):
    os.environ.update(env)
    events = pa.concat_tables([_to_users(p, user_type) for p in pieces])
    counts, state = sequence_transitions(events)
    write_parquet(state, storage.join(state_dir, f"shard-{k:05d}.parquet"))
    parts = split_by(counts, (counts["day"].to_numpy() % q).astype(np.int64), q)
    return parts if q > 1 else parts[0]


def _by_day(table: pa.Table) -> list[pa.Table]:
    days = table["day"].to_numpy()
    unique = np.unique(days)
    return split_by(table, np.searchsorted(unique, days), len(unique))


def _write(root, env, n_counts, *pieces):
    os.environ.update(env)
    counts = pa.concat_tables(pieces[:n_counts])
    rows = []
    for part in _by_day(counts) if counts.num_rows else []:
        table = sum_day(part)
        day = table["day"][0].as_py()
        write_day_file(table, storage.join(storage.transitions_dir(root), f"day={day}"))
        rows.append((day, table.num_rows, pc.sum(table["count"]).as_py()))
    items = pa.concat_tables(pieces[n_counts:])
    item_days = []
    for part in _by_day(items) if items.num_rows else []:
        table = sum_items_day(part)
        item_days.append(table["day"][0].as_py())
        write_day_file(table, storage.join(items_dir(root), f"day={item_days[-1]}"))
    return pa.table({"day": pa.array([r[0] for r in rows], pa.date32()),
                     "rows": pa.array([r[1] for r in rows], pa.int64()),
                     "transitions": pa.array([r[2] for r in rows], pa.int64())}), item_days


def count_with_tasks(ray, interactions: str, items: pa.Table, after_day: int | None,
                     before_day: int | None, state_uri: str | None, state_type: str | None,
                     root: str, state_dir: str, n: int, env: dict,
                     ) -> tuple[dict, pa.Table | None, bool, set]:
    """(read counters, per-day summary or None when no event is new, whether ids are text,
    the days whose item counts were written)."""
    files = list_input_files(interactions)
    q = n  # day buckets of the write wave
    batches = file_batches(ray, files, n)
    items_ref = ray.put(items.select(["item_id", "cluster_id"]))
    read = ray.remote(num_returns=1 + n + q)(_read_split)
    outs = [read.remote(b, items_ref, after_day, before_day, env, n, q) for b in batches]
    stats = ray.get([o[0] for o in outs])
    errors = [s["error"] for s in stats if "error" in s]
    if errors:
        raise InputError(errors[0])
    counts: dict = {"files": len(files)}
    for s in stats:
        merge_counts(counts, s)
    if counts.get("rows", 0) == 0:
        raise InputError(f"interactions hold no rows: {interactions}")
    string_users = any(s["user_type"] == "string" for s in stats) or state_type == "string"
    if counts.get("events", 0) == 0:
        return counts, None, string_users, set()
    user_type = pa.string() if string_users else pa.int64()
    reshard = ray.remote(num_returns=n)(_reshard)
    pieces = []
    for o, s in zip(outs, stats, strict=True):
        own = list(o[1:1 + n])
        if string_users and s["user_type"] == "int":
            own = reshard.remote(n, *own) if n > 1 else [reshard.remote(n, *own)]
        pieces.append(own)
    if state_uri:
        split_state = ray.remote(num_returns=n)(_state_split)
        fs, path = storage.arrow_fs_for(state_uri)
        for info in fs.get_file_info(pa.fs.FileSelector(path)):
            if info.path.endswith(".parquet"):
                uri = storage.join(state_uri, info.base_name)
                got = split_state.remote(uri, n, user_type, env)
                pieces.append(got if n > 1 else [got])
    shard = ray.remote(num_returns=q)(_shard)
    partial = []
    for k in range(n):
        got = shard.remote(k, state_dir, env, q, user_type, *[p[k] for p in pieces])
        partial.append(got if q > 1 else [got])
    write = ray.remote(num_returns=2)(_write)
    written = [write.remote(root, env, len(partial), *[p[b] for p in partial],
                            *[o[1 + n + b] for o in outs]) for b in range(q)]
    days = ray.get([w[0] for w in written])
    item_days = {d for w in ray.get([w[1] for w in written]) for d in w}
    return counts, pa.concat_tables(days), string_users, item_days

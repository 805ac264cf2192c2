"""Per-user sequence work of SYSTEM.md "Transitions", vectorised, for whole users at a time.

Pure functions (numpy + pyarrow, no Ray) shared by both execution engines of jobs.aggregate:
order a shard's events by (user, ts, input order), collapse repeats, count novel triples per UTC
day, and carry each user's last two clusters as state so a later run can continue the sequences.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import schemas, storage
from common.inputs import US_PER_DAY
from common.item_counts import ITEM_COUNTS
from common.tables_io import write_parquet

STATE_TS = np.iinfo(np.int64).min  # pseudo-events of the carried state sort before every event
COUNTS = pa.schema([("day", pa.int32()), ("c1", pa.int32()), ("c2", pa.int32()),
                    ("c3", pa.int32()), ("count", pa.int64())])


def user_shard(users: pa.Array, n: int) -> np.ndarray:
    """A stable shard in [0, n) per user: Fibonacci hashing of ints, pandas' hash of strings."""
    if pa.types.is_integer(users.type):
        h = users.to_numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return ((h >> np.uint64(32)) % np.uint64(n)).astype(np.int32)
    import pandas as pd

    h = pd.util.hash_array(np.asarray(users.to_pylist(), dtype=object))
    return (h % np.uint64(n)).astype(np.int32)


def state_events(state: pa.Table) -> pa.Table:
    """Each user's carried (c_prev, c_last) as pseudo-events ordered before all real events."""
    has_prev = pc.is_valid(state["c_prev"])
    prev = state.filter(has_prev)
    n_prev, n = prev.num_rows, state.num_rows
    return pa.table({
        "user_id": pa.concat_arrays([prev["user_id"].combine_chunks(),
                                     state["user_id"].combine_chunks()]),
        "ts": np.full(n_prev + n, STATE_TS, dtype=np.int64),
        "ord": np.r_[np.full(n_prev, -2), np.full(n, -1)].astype(np.int64),
        "cluster_id": pa.concat_arrays([prev["c_prev"].combine_chunks(),
                                        state["c_last"].combine_chunks()]).cast(pa.int32()),
    })


def sequence_transitions(events: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(partial daily counts, per-user state) of the events of a set of whole users.

    events: user_id, ts (us since the epoch, UTC), ord (input order), cluster_id.
    counts: day (days since the epoch), c1, c2, c3, count. state: user_id, c_prev, c_last.
    """
    users = events["user_id"].combine_chunks()
    if pa.types.is_integer(users.type):
        codes = users.to_numpy()
    else:
        codes = pc.dictionary_encode(users).indices.to_numpy()
    ts, ords = events["ts"].to_numpy(), events["ord"].to_numpy()
    order = np.lexsort((ords, ts, codes))
    u, t, c = codes[order], ts[order], events["cluster_id"].to_numpy()[order]
    # Collapse consecutive repeats: keep the first event of every run of one cluster.
    keep = np.ones(len(u), dtype=bool)
    keep[1:] = (u[1:] != u[:-1]) | (c[1:] != c[:-1])
    u, t, c, order = u[keep], t[keep], c[keep], order[keep]
    # Position j >= 2 of one user's sequence with c[j] not in {c[j-2], c[j-1]} (c[j-1] != c[j]
    # already holds after collapsing).
    j = np.flatnonzero((u[2:] == u[:-2]) & (c[2:] != c[:-2]) & (t[2:] != STATE_TS)) + 2
    triples = pa.table({
        "day": (t[j] // US_PER_DAY).astype(np.int32),
        "c1": c[j - 2].astype(np.int32), "c2": c[j - 1].astype(np.int32),
        "c3": c[j].astype(np.int32),
    })
    counts = triples.group_by(["day", "c1", "c2", "c3"]).aggregate([("c3", "count")])
    counts = counts.rename_columns(["day", "c1", "c2", "c3", "count"]).cast(COUNTS)
    last = np.flatnonzero(np.r_[u[1:] != u[:-1], True]) if len(u) else np.array([], np.int64)
    has_prev = (last >= 1) & (u[np.maximum(last - 1, 0)] == u[last])
    state = pa.table({
        "user_id": users.take(order[last]),
        "c_prev": pa.array(c[np.maximum(last - 1, 0)].astype(np.int32), mask=~has_prev),
        "c_last": c[last].astype(np.int32),
    })
    return counts, state


def sum_day(counts: pa.Table) -> pa.Table:
    """Partial counts of one day -> final rows in schemas.TRANSITIONS, sorted."""
    total = counts.group_by(["day", "c1", "c2", "c3"]).aggregate([("count", "sum")])
    total = total.rename_columns(["day", "c1", "c2", "c3", "count"])
    days = pc.cast(total["day"], pa.int32()).cast(pa.date32())
    total = total.set_column(0, "day", days).cast(schemas.TRANSITIONS)
    return total.sort_by([("c1", "ascending"), ("c2", "ascending"), ("c3", "ascending")])


def write_day_file(table: pa.Table, folder: str) -> None:
    """Replace the day's folder with one part-0.parquet (deterministic name and content)."""
    storage.remove(folder)
    write_parquet(table, storage.join(folder, "part-0.parquet"))


def sum_items_day(partial: pa.Table) -> pa.Table:
    """Partial item counts of one day (day as days since the epoch) -> ITEM_COUNTS, sorted."""
    t = partial.group_by(["day", "cluster_id", "item_id"]).aggregate([("count", "sum")])
    t = t.rename_columns(["day", "cluster_id", "item_id", "count"])
    t = t.set_column(0, "day", pc.cast(t["day"], pa.int32()).cast(pa.date32())).cast(ITEM_COUNTS)
    return t.sort_by([("cluster_id", "ascending"), ("item_id", "ascending")])


def split_by(table: pa.Table, keys: np.ndarray, n: int) -> list[pa.Table]:
    """table rows grouped into n tables by keys in [0, n) (row order kept within each)."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n + 1))
    sorted_table = table.take(order)
    return [sorted_table.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(n)]

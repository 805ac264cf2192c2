"""Per-user sequence work of docs/contracts.md "Transitions", vectorised, for whole users at a time.

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


def count_keys(columns: dict[str, np.ndarray], weights: np.ndarray | None = None,
                schema: pa.Schema = COUNTS) -> pa.Table:
    """Rows per distinct combination of the integer columns (summing weights when given).

    The columns are packed into one int64 key (each offset by its minimum, `bits` wide) and
    sorted: on 2 cores this is ~10x cheaper than Arrow's multi-key hash group_by, which
    also spawns threads that compete with the other Ray worker. Output is sorted by the
    columns in the order given; the last field of `schema` receives the counts.
    """
    names = list(columns)
    values = [np.asarray(columns[k]).astype(np.int64) for k in names]
    n = len(values[0]) if values else 0
    if n == 0:
        return schema.empty_table()
    lows = [int(v.min()) for v in values]
    widths = [max(1, int(v.max()) - lo + 1).bit_length() for v, lo in zip(values, lows,
                                                                          strict=True)]
    if sum(widths) > 62:  # ids too far apart to pack: Arrow's group_by, single-threaded
        table = pa.table(dict(zip(names, values, strict=True)))
        if weights is None:
            out = table.group_by(names, use_threads=False).aggregate([(names[0], "count")])
        else:
            table = table.append_column("w", pa.array(weights))
            out = table.group_by(names, use_threads=False).aggregate([("w", "sum")])
        out = out.sort_by([(k, "ascending") for k in names])
        return out.rename_columns(schema.names).cast(schema)
    key = np.zeros(n, dtype=np.int64)
    for v, lo, w in zip(values, lows, widths, strict=True):
        key = (key << w) | (v - lo)
    if weights is None:
        key.sort()
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        count = np.diff(np.r_[starts, n])
    else:
        order = np.argsort(key)
        key = key[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        count = np.add.reduceat(np.asarray(weights)[order], starts)
    key = key[starts]
    out = {}
    for name, lo, w in reversed(list(zip(names, lows, widths, strict=True))):
        out[name] = (key & ((1 << w) - 1)) + lo
        key = key >> w
    arrays = [pa.array(out[k]).cast(schema.field(k).type) for k in names]
    arrays.append(pa.array(count.astype(np.int64)))
    return pa.Table.from_arrays(arrays, schema=schema)


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
    counts = count_keys({"day": t[j] // US_PER_DAY, "c1": c[j - 2], "c2": c[j - 1],
                         "c3": c[j]})
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
    total = count_keys({k: counts[k].to_numpy() for k in ("day", "c1", "c2", "c3")},
                       counts["count"].to_numpy())
    days = pc.cast(total["day"], pa.int32()).cast(pa.date32())
    return total.set_column(0, "day", days).cast(schemas.TRANSITIONS)


def write_day_file(table: pa.Table, folder: str) -> None:
    """Replace the day's folder with one part-0.parquet (deterministic name and content): the
    new file replaces the old one in one step (write_parquet), then anything else in the folder
    goes, so a reader running meanwhile never finds the day missing or half written."""
    write_parquet(table, storage.join(folder, "part-0.parquet"))
    fs, path = storage.fsspec_for(folder)
    fs.invalidate_cache(path)
    for other in fs.ls(path, detail=False):
        # S3 may list the folder itself (an empty "day=.../" object a console left): not a file
        # of the folder, and removing it recursively would take part-0.parquet along.
        if other.rstrip("/") == path.rstrip("/"):
            continue
        if other.rstrip("/").rsplit("/", 1)[-1] != "part-0.parquet":
            fs.rm(other, recursive=True)


def sum_items_day(partial: pa.Table) -> pa.Table:
    """Partial item counts of one day (day as days since the epoch) -> ITEM_COUNTS, sorted."""
    t = partial.group_by(["day", "cluster_id", "item_id"], use_threads=False).aggregate(
        [("count", "sum")])
    t = t.rename_columns(["day", "cluster_id", "item_id", "count"])
    t = t.set_column(0, "day", pc.cast(t["day"], pa.int32()).cast(pa.date32())).cast(ITEM_COUNTS)
    return t.sort_by([("cluster_id", "ascending"), ("item_id", "ascending")])


def split_by(table: pa.Table, keys: np.ndarray, n: int) -> list[pa.Table]:
    """table rows grouped into n tables by keys in [0, n) (row order kept within each)."""
    # Small keys as uint8/uint16 get numpy's O(n) radix sort instead of a merge sort.
    small = np.uint8 if n <= 2**8 else np.uint16 if n <= 2**16 else np.int64
    order = np.argsort(keys.astype(small), kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n + 1))
    sorted_table = table.take(order)
    return [sorted_table.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(n)]

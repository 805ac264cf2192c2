"""Read and validate the interactions input with Ray (SYSTEM.md "Inputs").

Ray tasks read the input files (in path order, a run of files per task) with pyarrow, check the
columns, normalise `ts` to int64 microseconds since the epoch in UTC, map items to clusters and
drop the rows the contract drops, counting them by reason. Each row gets an explicit order key
`ord = file_index * 2**40 + row_in_file`, because "ties keep input order" must survive a shuffle
that promises no order. The cleaned blocks stay in the object store and become a Ray Dataset with
`ray.data.from_arrow_refs`; the driver only ever sees the per-task counters.

Plain tasks rather than `ray.data.read_parquet` because Ray Data has no row-in-file index and
the drop counters must come back beside the data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.cli import InputError
from common.storage import arrow_fs_for, is_s3

REQUIRED = ("user_id", "item_id", "ts")
DROP_REASONS = ("null_user_id", "null_item_id", "null_ts", "bad_ts", "unknown_item")
ORD_SHIFT = 40  # room for 2**40 rows per file and 2**23 files in an int64 order key
US_PER_DAY = 86_400_000_000
EVENTS = pa.schema([("user_id", pa.int64()), ("ts", pa.int64()), ("ord", pa.int64()),
                    ("cluster_id", pa.int32())])


def storage_env() -> dict[str, str]:
    """The S3 variables of the driver, passed to tasks whose workers may predate them."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def list_input_files(uri: str) -> list[str]:
    """Data files under uri (a file or a folder, searched recursively), sorted by path."""
    fs, path = arrow_fs_for(uri)
    info = fs.get_file_info(path)
    if info.type == pa.fs.FileType.NotFound:
        raise InputError(f"interactions not found: {uri}")
    if info.type == pa.fs.FileType.File:
        return [uri]
    names = sorted(
        f.path for f in fs.get_file_info(pa.fs.FileSelector(path, recursive=True))
        if f.type == pa.fs.FileType.File
        and not any(p.startswith((".", "_")) for p in f.path[len(path):].split("/"))
    )
    if not names:
        raise InputError(f"interactions folder holds no files: {uri}")
    prefix = uri.split("://", 1)[0] + "://" if is_s3(uri) else ""
    return [prefix + n for n in names]


def read_items(uri: str) -> pa.Table:
    """The items table (item_id, cluster_id); a one-line InputError naming missing columns."""
    from common.tables_io import read_table

    table = read_table(uri)
    missing = [c for c in ("item_id", "cluster_id") if c not in table.column_names]
    if missing:
        raise InputError(f"items {uri} is missing column(s): {', '.join(missing)}")
    if table["cluster_id"].null_count:
        raise InputError(f"items {uri}: cluster_id has {table['cluster_id'].null_count} nulls")
    return table.select(["item_id", "cluster_id"])


def read_file(uri: str) -> pa.Table:
    """The required columns of one Parquet or CSV file; a clear InputError when unusable."""
    fs, path = arrow_fs_for(uri)
    if fs.get_file_info(path).size == 0:
        raise InputError(f"interactions file is empty: {uri}")
    try:
        if path.endswith((".csv", ".csv.gz", ".tsv")):
            with fs.open_input_stream(path) as f:
                # An empty CSV field is a missing value, for text ids too.
                table = pacsv.read_csv(
                    f, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        else:
            table = pq.read_table(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"cannot read interactions file {uri}: {e}") from e
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(f"interactions file {uri} is missing column(s): {', '.join(missing)}")
    return table.select(list(REQUIRED))


def parse_ts(col: pa.ChunkedArray) -> pa.Array:
    """ts -> int64 microseconds since the epoch, UTC; null where missing or unparseable."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_null(t):  # a column with no value at all (e.g. an empty CSV column)
        return pa.nulls(len(col), pa.int64())
    if pa.types.is_timestamp(t):
        # Naive timestamps are read as UTC; zoned ones are stored as UTC instants already.
        return pc.cast(col, pa.timestamp("us", tz=t.tz), safe=False).view(pa.int64())
    if pa.types.is_date(t):
        return pc.multiply(pc.cast(pc.cast(col, pa.date32()), pa.int32()).cast(pa.int64()),
                           US_PER_DAY)
    if pa.types.is_integer(t):
        return pc.multiply(pc.cast(col, pa.int64()), 1_000_000)
    if pa.types.is_floating(t):
        values = col.to_numpy(zero_copy_only=False)
        ok = np.isfinite(values)
        return pa.array(np.where(ok, values * 1e6, 0).astype(np.int64), mask=~ok)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        import pandas as pd

        s = pd.Series(col.to_pylist(), dtype="object")
        numeric = pd.to_numeric(s, errors="coerce")
        stamps = pd.to_datetime(s.where(numeric.isna()), utc=True, errors="coerce",
                                format="ISO8601")
        us = stamps.dt.as_unit("us").astype("int64")
        us = us.where(stamps.notna(), numeric * 1e6)
        ok = us.notna().to_numpy()
        return pa.array(np.where(ok, us.fillna(0).to_numpy(), 0).astype(np.int64), mask=~ok)
    raise InputError(f"interactions column ts has unsupported type {t}")


def _ids(col: pa.ChunkedArray, name: str) -> pa.Array:
    """Integer ids -> int64, anything else -> string (floats with whole values count as ints)."""
    col = col.combine_chunks()
    if pa.types.is_integer(col.type) or pa.types.is_null(col.type):
        return pc.cast(col, pa.int64())
    if pa.types.is_floating(col.type):
        try:
            return pc.cast(col, pa.int64())
        except pa.ArrowInvalid:
            pass
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.cast(col, pa.string())
    try:
        return pc.cast(col, pa.string())
    except pa.ArrowNotImplementedError as e:
        raise InputError(f"interactions column {name} has unsupported type {col.type}") from e


def clean_events(table: pa.Table, file_index: int, item_ids: pa.Array, item_clusters: np.ndarray,
                 after_day: int | None = None) -> tuple[pa.Table, dict, pa.Table]:
    """Drop and count what the contract drops; returns (events, counters, item positions).

    Item positions index `item_ids` (the items table's order), one per kept event.

    events: user_id, ts (us, UTC), ord, cluster_id; rows of days <= after_day (days since the
    epoch) are skipped, not dropped, because an incremental run has counted them already.
    """
    n = table.num_rows
    users, items, ts = _ids(table["user_id"], "user_id"), _ids(table["item_id"], "item_id"), \
        parse_ts(table["ts"])
    counts = dict.fromkeys(DROP_REASONS, 0)
    null_user = pc.is_null(users).to_numpy(zero_copy_only=False)
    null_item = pc.is_null(items).to_numpy(zero_copy_only=False) & ~null_user
    raw_null_ts = pc.is_null(table["ts"]).to_numpy(zero_copy_only=False)
    bad = pc.is_null(ts).to_numpy(zero_copy_only=False)
    ids_ok = ~null_user & ~null_item
    counts["null_user_id"] = int(null_user.sum())
    counts["null_item_id"] = int(null_item.sum())
    counts["null_ts"] = int((raw_null_ts & ids_ok).sum())
    counts["bad_ts"] = int((bad & ~raw_null_ts & ids_ok).sum())
    if pa.types.is_integer(items.type) != pa.types.is_integer(item_ids.type):
        items, item_ids = pc.cast(items, pa.string()), pc.cast(item_ids, pa.string())
    pos = pc.index_in(items, value_set=item_ids).to_numpy(zero_copy_only=False)
    unknown = np.isnan(pos) if pos.dtype.kind == "f" else np.zeros(n, bool)
    ok = ids_ok & ~bad
    counts["unknown_item"] = int((unknown & ok).sum())
    ok &= ~unknown
    ts_np = pc.fill_null(ts, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if after_day is not None:
        fresh = ts_np // US_PER_DAY > after_day
        counts["skipped_old_days"] = int((ok & ~fresh).sum())
        ok &= fresh
    idx = np.flatnonzero(ok)
    cluster = item_clusters[np.where(ok, pos, 0).astype(np.int64)[idx]]
    events = pa.table({
        "user_id": users.take(idx),
        "ts": ts_np[idx],
        "ord": (np.int64(file_index) << ORD_SHIFT) + idx.astype(np.int64),
        "cluster_id": cluster.astype(np.int32),
    })
    counts["rows"] = n
    counts["events"] = len(idx)
    if len(idx):
        counts["min_day"] = int(ts_np[idx].min() // US_PER_DAY)
        counts["max_day"] = int(ts_np[idx].max() // US_PER_DAY)
    return events, counts, np.where(ok, pos, 0).astype(np.int64)[idx]


@dataclass
class Events:
    """The cleaned interactions as a Ray Dataset plus what the reading counted."""

    ds: object
    counts: dict = field(default_factory=dict)
    user_type: pa.DataType = pa.int64()
    item_counts: object = None


def _item_counts(events: pa.Table, pos: np.ndarray, item_text: pa.Array,
                 item_clusters: np.ndarray) -> pa.Table:
    """Daily counts per (cluster, item) of one file's events: item grounding for later parts.

    Counted on item positions (ints) and named afterwards: a few thousand rows get their text id
    instead of every event.
    """
    from common.sequences import count_keys

    day = events["ts"].to_numpy() // US_PER_DAY
    schema = pa.schema([("day", pa.int32()), ("pos", pa.int64()), ("count", pa.int64())])
    t = count_keys({"day": day, "pos": pos}, schema=schema)
    at = t["pos"].to_numpy()
    return pa.table({"day": t["day"], "cluster_id": pa.array(item_clusters[at].astype(np.int32)),
                     "item_id": item_text.take(pa.array(at)), "count": t["count"]})


def merge_counts(total: dict, part: dict) -> dict:
    for k, v in part.items():
        if k in ("min_day", "max_day"):
            total[k] = (min if k == "min_day" else max)(total.get(k, v), v)
        elif k != "user_type":
            total[k] = total.get(k, 0) + v
    return total


def read_batch(batch, items_table, after_day, env):
    """Read a run of consecutive files in one task: fewer, larger blocks and less scheduling."""
    os.environ.update(env)
    ids = _ids(items_table["item_id"], "item_id")
    text = pc.cast(ids, pa.string())
    clusters = items_table["cluster_id"].to_numpy()
    counts: dict = {}
    parts, item_parts = [], []
    try:
        for file_index, uri in batch:
            events, part, items = clean_events(read_file(uri), file_index, ids, clusters,
                                               after_day)
            merge_counts(counts, part)
            parts.append(events)
            item_parts.append(_item_counts(events, items, text, clusters))
    except InputError as e:
        return {"error": str(e)}, None, None
    if len({p["user_id"].type for p in parts}) > 1:  # int ids in one file, text in another
        parts = [p.set_column(0, "user_id", pc.cast(p["user_id"], pa.string())) for p in parts]
    events = pa.concat_tables(parts)
    counts["user_type"] = "int" if pa.types.is_integer(events["user_id"].type) else "string"
    return counts, events, pa.concat_tables(item_parts)


def read_events(interactions: str, items_table: pa.Table, after_day: int | None = None) -> Events:
    """Launch read tasks over runs of files (path order); InputError on an unusable file."""
    import ray

    files = list_input_files(interactions)
    read = ray.remote(num_returns=3)(read_batch)
    items_ref = ray.put(items_table.select(["item_id", "cluster_id"]))
    env = storage_env()
    n_tasks = min(len(files), 4 * max(1, int(ray.cluster_resources().get("CPU", 1))))
    indexed = list(enumerate(files))
    batches = [indexed[k * len(files) // n_tasks:(k + 1) * len(files) // n_tasks]
               for k in range(n_tasks)]
    outs = [read.remote(b, items_ref, after_day, env) for b in batches]
    stats = ray.get([o[0] for o in outs])
    errors = [s["error"] for s in stats if "error" in s]
    if errors:
        raise InputError(errors[0])
    counts: dict = {"files": len(files)}
    for s in stats:
        merge_counts(counts, s)
    if counts.get("rows", 0) == 0:
        raise InputError(f"interactions hold no rows: {interactions}")
    types = {s["user_type"] for s in stats}
    refs = [o[1] for o in outs]
    user_type = pa.int64()
    if "string" in types:
        user_type = pa.string()
        cast = ray.remote(lambda t: t.set_column(0, "user_id", pc.cast(t["user_id"], pa.string())))
        refs = [cast.remote(r) if s["user_type"] == "int" else r
                for r, s in zip(refs, stats, strict=True)]
    return Events(
        ds=ray.data.from_arrow_refs(refs),
        counts=counts,
        user_type=user_type,
        item_counts=ray.data.from_arrow_refs([o[2] for o in outs]),
    )

"""Read and validate the interactions input with Ray (docs/contracts.md "Inputs").

Ray tasks read the input files (in path order, a run of files per task) with pyarrow, check the
columns, normalise `ts` to int64 microseconds since the epoch in UTC (instants outside
[1970-01-01, 2100-01-01) are `bad_ts`: epoch milliseconds or nanoseconds read as seconds land
there instead of wrapping), map items to clusters and drop the rows the contract drops, counting
them by reason. Rows of days on or after `before_day` (the as_of day) are held, not dropped: they
stay in the log for a later run. Each row gets an explicit order key
`ord = file_index * 2**40 + row_in_file`, because "ties keep input order" must survive a shuffle
that promises no order. The cleaned blocks stay in the object store and become a Ray Dataset with
`ray.data.from_arrow_refs`; the driver only ever sees the per-task counters.

Plain tasks rather than `ray.data.read_parquet` because Ray Data has no row-in-file index and
the drop counters must come back beside the data.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.cli import InputError
from common.storage import arrow_fs_for, is_s3

log = logging.getLogger(__name__)
REQUIRED = ("user_id", "item_id", "ts")
DROP_REASONS = ("null_user_id", "null_item_id", "null_ts", "bad_ts", "unknown_item")
ORD_SHIFT = 40  # room for 2**40 rows per file and 2**23 files in an int64 order key
US_PER_DAY = 86_400_000_000
# Valid instants: [1970-01-01, 2100-01-01) in epoch seconds. 2100 is far from any real log and far
# from int64 overflow: 4.1e9 s is 4.1e18 ns, below 2**63 = 9.2e18.
MAX_TS_S = 4_102_444_800
PLAUSIBLE_S = 315_532_800  # 1980-01-01: a unit hint must land a log in a believable year
BAD_TS_WARN_SHARE = 0.5  # warn (with a unit hint) when more of a file's ts are bad than this
MAX_WARNINGS = 10
INT32 = (-(2**31), 2**31 - 1)
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


def _examples(values: list, n: int = 3) -> str:
    return ", ".join(str(v) for v in values[:n]) + (", ..." if len(values) > n else "")


def read_items(uri: str, clusters_uri: str | None = None) -> pa.Table:
    """The items table (item_id, cluster_id int32, one row per item), checked: InputError names
    missing columns, nulls, non-integer or out-of-int32 cluster ids, an item in two clusters, and
    cluster ids missing from the catalog at clusters_uri (when that file exists).

    Checked here because the aggregate counts whatever ids it is given: a bad id would otherwise
    only fail at publish, after every count was built on it.
    """
    from common import storage
    from common.tables_io import read_table

    table = read_table(uri)
    missing = [c for c in ("item_id", "cluster_id") if c not in table.column_names]
    if missing:
        raise InputError(f"items {uri} is missing column(s): {', '.join(missing)}")
    table = table.select(["item_id", "cluster_id"])
    clusters = table["cluster_id"]
    if clusters.null_count:
        raise InputError(f"items {uri}: cluster_id has {clusters.null_count} nulls")
    try:
        wide = pc.cast(clusters, pa.int64())  # safe cast: 1.5 or "a" fail instead of truncating
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InputError(f"items {uri}: cluster_id must be integers, got {clusters.type}") from e
    outside = pc.or_(pc.less(wide, INT32[0]), pc.greater(wide, INT32[1]))
    if pc.any(outside).as_py():
        bad = pc.unique(wide.filter(outside)).to_pylist()
        raise InputError(f"items {uri}: {len(bad)} cluster_id value(s) outside int32, e.g. "
                         f"{_examples(bad)}")
    table = table.set_column(1, "cluster_id", pc.cast(wide, pa.int32()))
    # Exact duplicate rows are harmless; an item in two clusters would silently take the first.
    table = table.group_by(["item_id", "cluster_id"], use_threads=False).aggregate([])
    per_item = table.group_by("item_id", use_threads=False).aggregate(
        [("cluster_id", "count"), ("cluster_id", "list")])
    conflicts = per_item.filter(pc.greater(per_item["cluster_id_count"], 1))
    if conflicts.num_rows:
        shown = [f"{r['item_id']} -> {sorted(r['cluster_id_list'])}"
                 for r in conflicts.slice(0, 3).to_pylist()]
        more = ", ..." if conflicts.num_rows > 3 else ""
        raise InputError(f"items {uri}: {conflicts.num_rows} item_id(s) map to more than one "
                         f"cluster_id, e.g. {', '.join(shown)}{more}")
    if clusters_uri and storage.exists(clusters_uri):
        from common.catalog import load_catalog
        from common.lookup import known_mask

        used = pc.unique(table["cluster_id"])
        known = known_mask(used, load_catalog(clusters_uri))
        unknown = sorted(used.filter(pc.invert(known)).to_pylist())
        if unknown:
            raise InputError(f"items {uri}: {len(unknown)} cluster_id value(s) not in the "
                             f"clusters catalog {clusters_uri}, e.g. {_examples(unknown)}")
    return table


def read_file(uri: str) -> pa.Table:
    """The required columns of one Parquet or CSV file; a clear InputError when unusable."""
    fs, path = arrow_fs_for(uri)
    if fs.get_file_info(path).size == 0:
        raise InputError(f"interactions file is empty: {uri}")
    try:
        if path.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
            with fs.open_input_stream(path) as f:
                # An empty CSV field is a missing value, for text ids too.
                table = pacsv.read_csv(
                    f,
                    parse_options=pacsv.ParseOptions(
                        delimiter="\t" if path.endswith((".tsv", ".tsv.gz")) else ","
                    ),
                    convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
                )
        else:
            table = pq.read_table(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"cannot read interactions file {uri}: {e}") from e
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(f"interactions file {uri} is missing column(s): {', '.join(missing)}")
    return table.select(list(REQUIRED))


def _scaled(values: np.ndarray, valid: np.ndarray, per_second: int) -> pa.Array:
    """Integer epoch values in 1/per_second units -> us; null outside [1970, 2100).

    The range is checked before scaling, so no value can overflow int64 on the way to us.
    """
    ok = valid & (values >= 0) & (values < MAX_TS_S * per_second)
    safe = np.where(ok, values, 0).astype(np.int64)
    us = safe * (1_000_000 // per_second) if per_second <= 1_000_000 else \
        safe // (per_second // 1_000_000)
    return pa.array(us, mask=~ok)


def _float_seconds(values: np.ndarray) -> pa.Array:
    """Float epoch seconds (NaN where missing) -> us; null when not finite or outside the range."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (values >= 0) & (values < MAX_TS_S)
    return pa.array(np.where(ok, values * 1e6, 0).astype(np.int64), mask=~ok)


def _numpy(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values with nulls as 0, validity) of a numeric Arrow array."""
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    return pc.fill_null(col, 0).to_numpy(zero_copy_only=False), valid


def parse_ts(col: pa.ChunkedArray) -> pa.Array:
    """ts -> int64 microseconds since the epoch, UTC; null where missing, unparseable or outside
    [1970-01-01, 2100-01-01) (e.g. epoch milliseconds read as seconds)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_null(t):  # a column with no value at all (e.g. an empty CSV column)
        return pa.nulls(len(col), pa.int64())
    if pa.types.is_timestamp(t):
        # The stored int64 is the UTC instant in the column's unit, zoned or naive (read as UTC).
        values, valid = _numpy(col.view(pa.int64()))
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
        return _scaled(values, valid, per_second)
    if pa.types.is_date32(t):
        values, valid = _numpy(col.view(pa.int32()))
        return _scaled(values.astype(np.int64) * 86_400, valid, 1)
    if pa.types.is_date64(t):
        values, valid = _numpy(col.view(pa.int64()))
        return _scaled(values, valid, 1_000)
    if pa.types.is_integer(t):
        return _scaled(*_numpy(col), 1)
    if pa.types.is_floating(t):
        return _float_seconds(col.to_numpy(zero_copy_only=False).astype(np.float64))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        import pandas as pd

        s = pd.Series(col.to_pylist(), dtype="object")
        numeric = pd.to_numeric(s, errors="coerce")
        stamps = pd.to_datetime(s.where(numeric.isna()), utc=True, errors="coerce",
                                format="ISO8601")
        # ISO strings through the timestamp branch (its range check), numeric ones as seconds.
        from_iso = parse_ts(pa.array(stamps))
        from_num = _float_seconds(numeric.to_numpy(dtype=np.float64, na_value=np.nan))
        return pc.if_else(stamps.notna().to_numpy(), from_iso, from_num)
    raise InputError(f"interactions column ts has unsupported type {t}")


def ts_unit_hint(col: pa.ChunkedArray, bad: np.ndarray) -> str:
    """What the bad numeric ts values would be in a larger unit, if that puts them in range."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return "the timestamps themselves are outside the range"
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        import pandas as pd

        values = pd.to_numeric(pd.Series(col.to_pylist(), dtype="object"), errors="coerce")
        values = values.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    else:
        return ""
    values = values[bad]
    values = values[np.isfinite(values)]
    if not len(values):
        return "they are not numbers or ISO-8601 strings"
    median = float(np.median(values))
    for unit, per_second in (("milliseconds", 1e3), ("microseconds", 1e6),
                             ("nanoseconds", 1e9)):
        if PLAUSIBLE_S <= median / per_second < MAX_TS_S:
            return f"they look like epoch {unit} (median {median:.0f})"
    return f"median value {median:.4g} fits no epoch unit"


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
                 after_day: int | None = None, before_day: int | None = None,
                 ) -> tuple[pa.Table, dict, pa.Table]:
    """Drop and count what the contract drops; returns (events, counters, item positions).

    Item positions index `item_ids` (the items table's order), one per kept event.

    events: user_id, ts (us, UTC), ord, cluster_id. Days are days since the epoch. Rows of days
    <= after_day are skipped (`skipped_old_days`): an incremental run has counted them already.
    Rows of days >= before_day are held (`held_for_later`): a run for day d must not count day d
    or later, and a later run will. Neither is a drop.
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
    present = int((~raw_null_ts & ids_ok).sum())
    if counts["bad_ts"] and counts["bad_ts"] > BAD_TS_WARN_SHARE * present:
        hint = ts_unit_hint(table["ts"], bad & ~raw_null_ts & ids_ok)
        counts["warnings"] = [
            f"{counts['bad_ts']} of {present} ts values are unparseable or outside "
            f"1970-01-01..2100-01-01 ({hint}); ts must be a timestamp, an ISO-8601 string or "
            "epoch seconds (docs/contracts.md, Inputs)"]
    if pa.types.is_integer(items.type) != pa.types.is_integer(item_ids.type):
        items, item_ids = pc.cast(items, pa.string()), pc.cast(item_ids, pa.string())
    pos = pc.index_in(items, value_set=item_ids).to_numpy(zero_copy_only=False)
    unknown = np.isnan(pos) if pos.dtype.kind == "f" else np.zeros(n, bool)
    ok = ids_ok & ~bad
    counts["unknown_item"] = int((unknown & ok).sum())
    ok &= ~unknown
    ts_np = pc.fill_null(ts, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    day = ts_np // US_PER_DAY
    if after_day is not None:
        fresh = day > after_day
        counts["skipped_old_days"] = int((ok & ~fresh).sum())
        ok &= fresh
    if before_day is not None:
        later = ok & (day >= before_day)
        counts["held_for_later"] = int(later.sum())
        if later.any():
            counts["held_min_day"] = int(day[later].min())
            counts["held_max_day"] = int(day[later].max())
        ok &= ~later
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
        if k.endswith(("min_day", "max_day")):
            total[k] = (min if k.endswith("min_day") else max)(total.get(k, v), v)
        elif k == "warnings":
            total[k] = (total.get(k, []) + v)[:MAX_WARNINGS]
        elif k != "user_type":
            total[k] = total.get(k, 0) + v
    return total


def read_batch(batch, items_table, after_day, env, before_day=None):
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
                                               after_day, before_day)
            part["warnings"] = [f"{uri}: {w}" for w in part.get("warnings", [])]
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


def file_batches(ray, files: list[str], min_tasks: int = 0) -> list[list[tuple[int, str]]]:
    """Runs of (index, file) in path order, one per read task: 4 per CPU of the cluster, or
    `min_tasks` (aggregate.num_partitions) when more. An autoscaling cluster that starts cold
    has no worker CPU yet, and the tasks asked for are what it scales up to."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n_tasks = min(len(files), max(min_tasks, 4 * max(1, cpus)))
    indexed = list(enumerate(files))
    return [indexed[k * len(files) // n_tasks:(k + 1) * len(files) // n_tasks]
            for k in range(n_tasks)]


def read_events(interactions: str, items_table: pa.Table, after_day: int | None = None,
                before_day: int | None = None, min_tasks: int = 0) -> Events:
    """Launch read tasks over runs of files (path order); InputError on an unusable file."""
    import ray

    files = list_input_files(interactions)
    read = ray.remote(num_returns=3)(read_batch)
    items_ref = ray.put(items_table.select(["item_id", "cluster_id"]))
    env = storage_env()
    batches = file_batches(ray, files, min_tasks)
    outs = [read.remote(b, items_ref, after_day, env, before_day) for b in batches]
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

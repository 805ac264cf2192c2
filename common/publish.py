"""Write a table version folder and point `tables/CURRENT` at it (docs/contracts.md
"Published table").

The folder layout is the one `common.lookup` reads. Every file of a version is written under a
new, unique version name first; `storage.swap_current` is the single atomic step at the end, so a
crash at any point before it leaves CURRENT on the old version (a half-written folder is never
named by CURRENT and is simply ignored).
"""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import schemas, storage
from common.catalog import Catalog
from common.lookup import GLOBAL, known_mask
from common.tables_io import write_parquet

BACKOFF = pa.schema(
    [("c2", pa.int32()), ("rank", pa.int16()), ("c3", pa.int32()), ("score", pa.float32())]
)
ITEMS_OUT = pa.schema([("item_id", pa.string()), ("cluster_id", pa.int32())])
TOP_ITEMS = pa.schema(
    [
        ("cluster_id", pa.int32()),
        ("rank", pa.int16()),
        ("item_id", pa.string()),
        ("count", pa.int64()),
    ]
)


class TableError(ValueError):
    """A candidate table that breaks an invariant of the published table."""


def new_version(as_of: dt.date, strategy: str, now: dt.datetime | None = None) -> str:
    """`v20260301-hybrid-20260301T061502-1a2b3c`: sorts by day built for, then creation time."""
    now = now or dt.datetime.now(dt.UTC)
    return f"v{as_of:%Y%m%d}-{strategy}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def validate_table(table: pa.Table, catalog: Catalog) -> pa.Table:
    """Cast to schemas.TABLE and check: every c3 valid, no repeat in a row, none equals c1/c2,
    ranks 1..n without gaps, known sources. Raises TableError naming the first problem."""
    try:
        table = table.select(schemas.TABLE.names).cast(schemas.TABLE)
    except (KeyError, pa.ArrowInvalid) as e:
        raise TableError(f"table does not match schemas.TABLE: {e}") from e
    for name in schemas.TABLE.names:
        if table[name].null_count:
            raise TableError(f"table has nulls in {name}")
    valid = pa.array(catalog.ids, pa.int32())
    for col in ("c1", "c2", "c3"):
        bad = pc.invert(pc.is_in(table[col], value_set=valid))
        if pc.any(bad).as_py():
            raise TableError(f"table has {pc.sum(bad).as_py()} {col} values that are not clusters")
    if pc.any(pc.equal(table["c1"], table["c2"])).as_py():
        raise TableError("table has a row with c1 == c2")
    same = pc.or_(pc.equal(table["c3"], table["c1"]), pc.equal(table["c3"], table["c2"]))
    if pc.any(same).as_py():
        raise TableError(f"table has {pc.sum(same).as_py()} answers equal to c1 or c2")
    sources = pc.unique(table["source"]).to_pylist()
    unknown = sorted(set(sources) - set(schemas.TABLE_SOURCES))
    if unknown:
        raise TableError(f"table has unknown sources {unknown}")
    per_answer = table.group_by(["c1", "c2", "c3"]).aggregate([("rank", "count")])
    if per_answer.num_rows != table.num_rows:
        raise TableError(
            f"table repeats a c3 within a row ({table.num_rows - per_answer.num_rows})"
        )
    per_rank = table.group_by(["c1", "c2"]).aggregate(
        [("rank", "count"), ("rank", "max"), ("rank", "min")]
    )
    if per_rank.num_rows and not (
        pc.all(pc.equal(per_rank["rank_count"], pc.cast(per_rank["rank_max"], pa.int64()))).as_py()
        and pc.all(pc.equal(per_rank["rank_min"], 1)).as_py()
    ):
        raise TableError("table ranks are not 1..n within every row")
    return table.sort_by([("c1", "ascending"), ("c2", "ascending"), ("rank", "ascending")])


def run_ranks(keys: np.ndarray) -> np.ndarray:
    """1-based rank of each row within its run of equal consecutive keys (rows sorted by key,
    then by rank order): position minus the index where its run starts."""
    starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
    return np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)])) + 1


def build_backoff(
    global_snapshot: pa.Table, transitions: pa.Table, catalog: Catalog, k: int
) -> pa.Table:
    """Backoff lists: the snapshot's global successors of c2 (top k per c2), and under c2 = -1 the
    global top of every cluster by count of c3 in `transitions` (the window), ties by id, so the
    last backoff always has an answer for any pair. Only catalog clusters: the window can still
    hold transitions of a cluster since dropped from the catalog, which Serve could not name."""
    snap = global_snapshot.select(["c2", "rank", "c3", "score"]).cast(BACKOFF)
    snap = snap.filter(
        pc.and_(known_mask(snap["c2"], catalog), known_mask(snap["c3"], catalog))
    ).sort_by([("c2", "ascending"), ("rank", "ascending")])
    rank = run_ranks(snap["c2"].to_numpy())  # again: the dropped rows leave gaps
    keep = pa.array(rank <= k)
    per_c2 = pa.table(
        {
            "c2": snap["c2"].filter(keep),
            "rank": pa.array(rank, pa.int16()).filter(keep),
            "c3": snap["c3"].filter(keep),
            "score": snap["score"].filter(keep),
        },
        schema=BACKOFF,
    )
    counts = dict.fromkeys(catalog.ids, 0)
    if transitions.num_rows:
        summed = transitions.group_by("c3").aggregate([("count", "sum")])
        for c, n in zip(summed["c3"].to_pylist(), summed["count_sum"].to_pylist(), strict=True):
            if c in counts:
                counts[c] = n
    total = max(sum(counts.values()), 1)
    ranked = sorted(counts, key=lambda c: (-counts[c], c))[: k + 2]  # +2: c1, c2 are skipped
    top = pa.table(
        {
            "c2": pa.array([GLOBAL] * len(ranked), pa.int32()),
            "rank": pa.array(np.arange(1, len(ranked) + 1), pa.int16()),
            "c3": pa.array(ranked, pa.int32()),
            "score": pa.array([counts[c] / total for c in ranked], pa.float32()),
        },
        schema=BACKOFF,
    )
    return pa.concat_tables([per_c2, top])


def items_table(items: pa.Table) -> pa.Table:
    """The items input as published: item_id as string, cluster_id int32."""
    return pa.table(
        {
            "item_id": pc.cast(items["item_id"], pa.string()),
            "cluster_id": pc.cast(items["cluster_id"], pa.int32()),
        },
        schema=ITEMS_OUT,
    )


def build_top_items(item_counts: pa.Table, n: int = 10) -> pa.Table:
    """Per cluster the n items with most engagement in `item_counts` (cluster_id, item_id, count;
    days summed), ties by item id."""
    if item_counts.num_rows == 0:
        return TOP_ITEMS.empty_table()
    summed = (
        pa.table(
            {
                "cluster_id": pc.cast(item_counts["cluster_id"], pa.int32()),
                "item_id": pc.cast(item_counts["item_id"], pa.string()),
                "count": pc.cast(item_counts["count"], pa.int64()),
            }
        )
        .group_by(["cluster_id", "item_id"])
        .aggregate([("count", "sum")])
        .sort_by(
            [("cluster_id", "ascending"), ("count_sum", "descending"), ("item_id", "ascending")]
        )
    )
    clusters = summed["cluster_id"].to_numpy()
    rank = run_ranks(clusters)
    keep = rank <= n
    return pa.table(
        {
            "cluster_id": pa.array(clusters[keep], pa.int32()),
            "rank": pa.array(rank[keep], pa.int16()),
            "item_id": summed["item_id"].filter(pa.array(keep)),
            "count": summed["count_sum"].filter(pa.array(keep)),
        },
        schema=TOP_ITEMS,
    )


def catalog_table(catalog: Catalog) -> pa.Table:
    return pa.table(
        {
            "cluster_id": pa.array(catalog.ids, pa.int32()),
            "name": pa.array(catalog.names, pa.string()),
            "description": pa.array(catalog.descriptions, pa.string()),
        },
        schema=schemas.CLUSTERS,
    )


def write_version(
    root: str,
    version: str,
    table: pa.Table,
    backoff: pa.Table,
    catalog: Catalog,
    manifest: dict,
    items: pa.Table | None = None,
    top_items: pa.Table | None = None,
) -> str:
    """Write `tables/<version>/` (table validated first); manifest.json last. Returns the folder.
    Does not touch CURRENT."""
    table = validate_table(table, catalog)
    folder = storage.table_dir(root, version)
    if storage.exists(storage.join(folder, "manifest.json")):
        raise TableError(f"version {version} already exists")
    write_parquet(table, storage.join(folder, "table.parquet"))
    write_parquet(backoff.cast(BACKOFF), storage.join(folder, "backoff.parquet"))
    write_parquet(catalog_table(catalog), storage.join(folder, "clusters.parquet"))
    if items is not None:
        write_parquet(items_table(items), storage.join(folder, "items.parquet"))
    if top_items is not None:
        write_parquet(top_items.cast(TOP_ITEMS), storage.join(folder, "top_items.parquet"))
    full = {
        **manifest,
        "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "n_rows": table.num_rows,
        "n_pairs": table.group_by(["c1", "c2"]).aggregate([]).num_rows,
    }
    storage.write_json(storage.join(folder, "manifest.json"), full)
    return folder


def publish_version(root: str, version: str, **parts) -> str:
    """write_version(...) then swap CURRENT to it: the atomic publish. Returns the folder."""
    folder = write_version(root, version, **parts)
    storage.swap_current(root, version)
    return folder


def read_manifest(root: str, version: str) -> dict:
    """tables/<version>/manifest.json (FileNotFoundError when the version has none)."""
    return storage.read_json(storage.join(storage.table_dir(root, version), "manifest.json"))


def served_as_of(root: str) -> tuple[str, dt.date] | None:
    """(CURRENT's version, the day its table is for), or None while nothing is served."""
    current = storage.read_current(root)
    if not current:
        return None
    return current, dt.date.fromisoformat(str(read_manifest(root, current)["as_of"]))

"""The published table in memory, answering as the server would (docs/contracts.md
"Published table").

A published version is a folder `tables/<version>/` holding:
- `table.parquet`   c1, c2, rank, c3, score, source (schemas.TABLE): the answers per pair;
- `backoff.parquet` c2, rank, c3, score: successors of c2 alone, and the global top under c2 = -1;
- `clusters.parquet` the catalog the table was built with (names for the HTTP answers);
- `items.parquet` item_id (string), cluster_id; `top_items.parquet` cluster_id, rank, item_id
  (string), count: the items most engaged with recently inside each cluster (item grounding);
- `manifest.json`.
Serve and the evaluation share this class, so a hit rate measures exactly what is served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from common.catalog import Catalog
from common.storage import join
from common.tables_io import read_table

GLOBAL = -1  # the c2 key of the global backoff list

log = logging.getLogger(__name__)


def known_mask(column: pa.ChunkedArray, catalog: Catalog, also: tuple[int, ...] = ()) -> pa.Array:
    """True where the cluster id is in `catalog` (or in `also`); False for nulls."""
    value_set = pa.array([*catalog.ids, *also], pa.int64()).cast(column.type)
    return pc.is_in(column, value_set=value_set)


def drop_unknown_clusters(
    table: pa.Table, backoff: pa.Table, items: pa.Table | None, catalog: Catalog, version: str
) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    """The rows of a version that name only clusters of its own catalog. A publisher checks
    this already; a version that slips one through (a cluster dropped from clusters.parquet
    while the window still has its transitions) must cost rows, never a 5xx at answer time."""
    rows = pc.and_(
        pc.and_(known_mask(table["c1"], catalog), known_mask(table["c2"], catalog)),
        known_mask(table["c3"], catalog),
    )
    back = pc.and_(
        known_mask(backoff["c2"], catalog, (GLOBAL,)), known_mask(backoff["c3"], catalog)
    )
    kept_table, kept_backoff = table.filter(rows), backoff.filter(back)
    kept_items = None if items is None else items.filter(known_mask(items["cluster_id"], catalog))
    dropped = (
        table.num_rows - kept_table.num_rows,
        backoff.num_rows - kept_backoff.num_rows,
        0 if items is None else items.num_rows - kept_items.num_rows,
    )
    if any(dropped):
        log.warning(
            "version %s: dropped %d table rows, %d backoff rows and %d items naming clusters "
            "missing from its clusters.parquet",
            version,
            *dropped,
        )
    return kept_table, kept_backoff, kept_items


def rows_by_key(
    table: pa.Table,
    keys: Sequence[str] = ("c1", "c2"),
    cols: tuple[str, ...] = ("c3", "score"),
) -> dict[tuple, tuple[tuple, ...]]:
    """{key tuple: (row of `cols`, ...) in rank order} built with one sort, no per-row filtering.
    Shared by the lookup itself, jobs.infer (snapshots) and common.blend (tables)."""
    table = table.sort_by([(k, "ascending") for k in keys] + [("rank", "ascending")])
    key_cols = [table[k].to_pylist() for k in keys]
    out: dict[tuple, list] = {}
    for i, row in enumerate(zip(*(table[c].to_pylist() for c in cols), strict=True)):
        out.setdefault(tuple(col[i] for col in key_cols), []).append(row)
    return {k: tuple(v) for k, v in out.items()}


def padded_rows(lists, exclude, k: int, valid) -> list[tuple[int, float, str]]:
    """A table row as every table is built: the first `k` distinct clusters of `lists` (each a
    (rows of (c3, score), source) pair, the pair's own answers first, then its backoff lists),
    skipping `exclude` (c1, c2) and clusters not in `valid`. A backoff row's score is capped by
    the row above it, so scores never rise down a row. Used by jobs.infer.fill_table and the
    fine-tune's held-out frequency ranking."""
    used, out, last = set(exclude), [], float("inf")
    for i, (rows, source) in enumerate(lists):
        for c3, score in rows:
            if len(out) >= k:
                return out
            if c3 in used or c3 not in valid:
                continue
            used.add(c3)
            last = score if i == 0 else min(last, score)
            out.append((c3, last, source))
    return out


@dataclass(frozen=True)
class Lookup:
    """Immutable answers: a dict lookup per request (microseconds), swapped whole on a new
    version."""

    version: str
    pairs: dict[tuple[int, int], tuple[tuple[int, float], ...]]
    sources: dict[tuple[int, int], str]
    backoff: dict[int, tuple[tuple[int, float], ...]]
    catalog: Catalog
    item_clusters: dict[str, int] = field(default_factory=dict)
    top_items: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_tables(
        cls,
        version: str,
        table: pa.Table,
        backoff: pa.Table,
        catalog: Catalog,
        items: pa.Table | None = None,
        top_items: pa.Table | None = None,
    ) -> Lookup:
        table, backoff, items = drop_unknown_clusters(table, backoff, items, catalog, version)
        pairs = rows_by_key(table, ["c1", "c2"])
        # The source of a pair is that of its rank-1 row: iterate ranks descending, last one wins.
        desc = table.sort_by([("rank", "descending")])
        sources = {
            (a, b): s
            for a, b, s in zip(
                desc["c1"].to_pylist(),
                desc["c2"].to_pylist(),
                desc["source"].to_pylist(),
                strict=True,
            )
        }
        back = {k[0]: v for k, v in rows_by_key(backoff, ["c2"]).items()}
        item_clusters: dict[str, int] = {}
        if items is not None:
            item_clusters = dict(
                zip(items["item_id"].to_pylist(), items["cluster_id"].to_pylist(), strict=True)
            )
        tops: dict[int, tuple[str, ...]] = {}
        if top_items is not None:
            ordered = top_items.sort_by([("cluster_id", "ascending"), ("rank", "ascending")])
            acc: dict[int, list[str]] = {}
            for c, item in zip(
                ordered["cluster_id"].to_pylist(), ordered["item_id"].to_pylist(), strict=True
            ):
                acc.setdefault(c, []).append(item)
            tops = {c: tuple(v) for c, v in acc.items()}
        return cls(version, pairs, sources, back, catalog, item_clusters, tops)

    @classmethod
    def load(cls, root_or_dir: str, version: str | None = None) -> Lookup:
        """Load `<root>/tables/<version>/` (or a version folder itself when version is None)."""
        folder = join(root_or_dir, "tables", version) if version else root_or_dir
        name = version or folder.rstrip("/").rsplit("/", 1)[-1]

        def optional(file: str) -> pa.Table | None:
            from common.storage import exists

            uri = join(folder, file)
            return read_table(uri) if exists(uri) else None

        items = optional("items.parquet")
        top_items = optional("top_items.parquet")
        if items is not None:
            items = items.set_column(0, "item_id", items["item_id"].cast(pa.string()))
        if top_items is not None:
            idx = top_items.schema.get_field_index("item_id")
            top_items = top_items.set_column(idx, "item_id", top_items["item_id"].cast(pa.string()))
        return cls.from_tables(
            name,
            read_table(join(folder, "table.parquet")),
            read_table(join(folder, "backoff.parquet")),
            Catalog.from_table(read_table(join(folder, "clusters.parquet"))),
            items,
            top_items,
        )

    def answer(self, c1: int, c2: int, k: int) -> tuple[str, list[tuple[int, float]]]:
        """(source, [(c3, score), ...]) for the pair; a pair missing from the table gets c2's
        successors, topped up to k from the global top as the table's own rows are
        (padded_rows), with the source of its first answer.

        Backoff lists skip c1 and c2 so every answer is novel, as the table's rows are.
        """
        row = self.pairs.get((c1, c2))
        if row is not None:
            return self.sources[(c1, c2)], list(row[:k])
        lists = (
            (self.backoff.get(c2, ()), "backoff_c2"),
            (self.backoff.get(GLOBAL, ()), "backoff_global"),
        )
        picked = padded_rows(lists, (c1, c2), k, self.catalog)
        if not picked:
            return "empty", []
        return picked[0][2], [(c3, score) for c3, score, _ in picked]

"""The retrieval (RAG) snapshot for day d: per (c1, c2) the top successors in [d - W, d).

docs/contracts.md "Retrieval (RAG) snapshot for day d"; issue 3 item 1. Three rankings, so the
paper's retrieval variants can be compared (the prompt picks one, cfg.prompt.rag_variant):

- `frequency`: c1, c2, rank, c3, score, count, support. score = count / support, the share of the
  pair's window transitions that went to c3 (support = the pair's total in the window).
- `trend`: the same columns; score = (count in the last half of the window - count in the first
  half) / support. Halves have h = W // 2 days each: [d - W, d - W + h) and [d - h, d); for odd W
  the middle day is in neither. Scores may be zero or negative (a fading successor is still
  ranked, below the rising ones).
- `global`: c2, rank, c3, score, count, support: successors of c2 whatever c1 was; score =
  count / support (support = c2's total as the middle cluster in the window).

Every ranking keeps the top n per key, ordered by score descending, then c3 ascending, so a
snapshot is a pure function of the counts. Scores are ranked on their integer numerators (the
denominator is the same within a key), so ties are exact, never float noise. In the two pair
rankings a tie first goes to the successor c2 leads to more often over every c1 (its `global`
count): with a few transitions per pair, as with a hundred clusters and more, the top of a pair
is often a tie of ones and twos, and c2's pooled counts are the evidence the pair lacks (at the
simulator's defaults that lifts the frequency table's hit@5 by ~4%, docs/results.md section 2).

No leakage: `build_snapshot` keeps only rows with day in [d - W, d), whatever it is given, and
jobs/retrieve.py reads only those days' folders. Everything is pyarrow compute + numpy over the
per-triple counts (a few MB for a 14-day window: counts grow with clusters^3 x days, not with
events), so a snapshot takes well under a second; `partial_counts` is also what each Ray Data
block runs when jobs/retrieve.py reads a large window with Ray Data (sums combine across blocks).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from common.catalog import Catalog
from common.lookup import known_mask
from common.tables_io import write_parquet

DAY = dt.timedelta(days=1)
VARIANTS = ("frequency", "trend", "global")
# Bumped whenever the same counts would rank differently, so caches keyed by settings (the
# replay's adapters and tables) do not serve builds of an older ranking. 1: ties by id;
# 2 (2026-11-25): ties by c2's pooled count, then id.
RANKING_VERSION = 2

PAIR_SNAPSHOT = pa.schema(
    [
        ("c1", pa.int32()),
        ("c2", pa.int32()),
        ("rank", pa.int16()),
        ("c3", pa.int32()),
        ("score", pa.float64()),
        ("count", pa.int64()),
        ("support", pa.int64()),
    ]
)
GLOBAL_SNAPSHOT = pa.schema([f for f in PAIR_SNAPSHOT if f.name != "c1"])

# Per-triple window counts: the total and the two halves the trend compares.
WINDOW_COUNTS = pa.schema(
    [
        ("c1", pa.int32()),
        ("c2", pa.int32()),
        ("c3", pa.int32()),
        ("count", pa.int64()),
        ("first", pa.int64()),
        ("second", pa.int64()),
    ]
)


def window_bounds(day: dt.date, window_days: int) -> tuple[dt.date, dt.date, dt.date, dt.date]:
    """(start, end of first half, start of last half, end): [start, end) = [d - W, d)."""
    half = window_days // 2
    start = day - window_days * DAY
    return start, start + half * DAY, day - half * DAY, day


def partial_counts(transitions: pa.Table, day: dt.date, window_days: int) -> pa.Table:
    """WINDOW_COUNTS of the rows with day in [d - W, d): counts summed per (c1, c2, c3).

    Sums are associative, so this runs per block and again over the concatenated partials."""
    start, first_end, second_start, end = window_bounds(day, window_days)
    days = transitions["day"]
    inside = pc.and_(
        pc.greater_equal(days, pa.scalar(start, pa.date32())),
        pc.less(days, pa.scalar(end, pa.date32())),
    )
    t = transitions.filter(inside)
    count = pc.cast(t["count"], pa.int64())
    zero = pa.scalar(0, pa.int64())
    first = pc.if_else(pc.less(t["day"], pa.scalar(first_end, pa.date32())), count, zero)
    second = pc.if_else(
        pc.greater_equal(t["day"], pa.scalar(second_start, pa.date32())), count, zero
    )
    t = pa.table(
        {
            "c1": pc.cast(t["c1"], pa.int32()),
            "c2": pc.cast(t["c2"], pa.int32()),
            "c3": pc.cast(t["c3"], pa.int32()),
            "count": count,
            "first": first,
            "second": second,
        }
    )
    return merge_counts([t])


def merge_counts(parts: list[pa.Table]) -> pa.Table:
    """Sum WINDOW_COUNTS-shaped tables per (c1, c2, c3)."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return WINDOW_COUNTS.empty_table()
    t = pa.concat_tables(parts)
    g = t.group_by(["c1", "c2", "c3"]).aggregate(
        [("count", "sum"), ("first", "sum"), ("second", "sum")]
    )
    return pa.table(
        {
            "c1": g["c1"],
            "c2": g["c2"],
            "c3": g["c3"],
            "count": g["count_sum"],
            "first": g["first_sum"],
            "second": g["second_sum"],
        },
        schema=WINDOW_COUNTS,
    )


def _np(col) -> np.ndarray:
    return (
        col.to_numpy(zero_copy_only=False) if isinstance(col, pa.ChunkedArray | pa.Array) else col
    )


def _sort_order(columns: list[np.ndarray]) -> np.ndarray:
    """Row order sorting by columns[0], then columns[1], ... (all ascending, integers).

    Packs the columns into one int64 key (offsets from each column's minimum, mixed radix) and
    argsorts that once: about 2x faster than np.lexsort over four keys. Falls back to lexsort
    when the ranges do not fit in 63 bits."""
    shifted, radix = [], 1
    for col in columns:
        low = int(col.min())
        span = int(col.max()) - low + 1
        shifted.append((col.astype(np.int64) - low, span))
        radix *= span
    if radix >= 2**62:
        return np.lexsort(tuple(reversed(columns)))  # lexsort: the last array is the primary key
    key = np.zeros(len(columns[0]), dtype=np.int64)
    for col, span in shifted:
        key = key * span + col
    return np.argsort(key, kind="stable")


def top_per_key(
    keys: list[np.ndarray],
    c3: np.ndarray,
    numer: np.ndarray,
    count: np.ndarray,
    top_n: int,
    tie: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The top_n rows per key by numer descending, then `tie` descending (if given), then c3
    ascending.

    Returns the kept rows' key columns, rank (1..), c3, score (numer / support), count, support,
    where support is the key's total count (over all its rows, not only the kept ones)."""
    n = len(c3)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return {
            "keys": [k[:0] for k in keys],
            "rank": empty,
            "c3": c3[:0],
            "score": empty * 1.0,
            "count": empty,
            "support": empty,
        }
    order = _sort_order([*keys, -numer, *([] if tie is None else [-tie]), c3])
    skeys = [k[order] for k in keys]
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for k in skeys:
        new[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    rank = np.arange(n) - starts[group] + 1
    scount = count[order]
    support = np.add.reduceat(scount, starts)[group]
    keep = rank <= top_n
    score = numer[order] / np.maximum(support, 1)
    return {
        "keys": [k[keep] for k in skeys],
        "rank": rank[keep],
        "c3": c3[order][keep],
        "score": score[keep],
        "count": scount[keep],
        "support": support[keep],
    }


def _table(ranked: dict, key_names: list[str], schema: pa.Schema) -> pa.Table:
    cols = dict(zip(key_names, ranked["keys"], strict=True))
    cols.update({k: ranked[k] for k in ("rank", "c3", "score", "count", "support")})
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)


def rank_snapshot(counts: pa.Table, top_n: int) -> dict[str, pa.Table]:
    """The three rankings of WINDOW_COUNTS (see the module docstring)."""
    c1, c2, c3 = (_np(counts[c]).astype(np.int32) for c in ("c1", "c2", "c3"))
    count = _np(counts["count"]).astype(np.int64)
    trend = _np(counts["second"]).astype(np.int64) - _np(counts["first"]).astype(np.int64)
    per_c2 = (
        counts.group_by(["c2", "c3"]).aggregate([("count", "sum")])
        if counts.num_rows
        else pa.table({"c2": c2, "c3": c3, "count_sum": count})
    )
    g2, g3 = (_np(per_c2[c]).astype(np.int32) for c in ("c2", "c3"))
    gcount = _np(per_c2["count_sum"]).astype(np.int64)
    pooled = counts_at(g2, g3, gcount, c2, c3)
    pair_keys, pair_names = [c1, c2], ["c1", "c2"]
    return {
        "frequency": _table(
            top_per_key(pair_keys, c3, count, count, top_n, tie=pooled), pair_names, PAIR_SNAPSHOT
        ),
        "trend": _table(
            top_per_key(pair_keys, c3, trend, count, top_n, tie=pooled), pair_names, PAIR_SNAPSHOT
        ),
        "global": _table(top_per_key([g2], g3, gcount, gcount, top_n), ["c2"], GLOBAL_SNAPSHOT),
    }


def counts_at(
    g2: np.ndarray, g3: np.ndarray, gcount: np.ndarray, c2: np.ndarray, c3: np.ndarray
) -> np.ndarray:
    """gcount of each (c2[i], c3[i]), looked up in the distinct pairs (g2, g3) (all present)."""
    def packed(a, b):
        return (a.astype(np.int64) << 32) | (b.astype(np.int64) & 0xFFFFFFFF)

    gkey = packed(g2, g3)
    order = np.argsort(gkey)
    return gcount[order][np.searchsorted(gkey[order], packed(c2, c3))]


def build_snapshot(
    transitions: pa.Table, day: dt.date, window_days: int, top_n: int
) -> dict[str, pa.Table]:
    """{"frequency", "trend", "global"} tables for day d from daily counts (schemas.TRANSITIONS).

    Only rows with day in [d - W, d) are used, whatever `transitions` holds."""
    return rank_snapshot(partial_counts(transitions, day, window_days), top_n)


# ---------------------------------------------------------------- storage
def write_snapshot(
    root: str, day: dt.date, window_days: int, snap: dict[str, pa.Table], meta: dict | None = None
) -> str:
    """Write `<root>/retrieval/day=<d>_w=<W>/{frequency,trend,global}.parquet` + meta.json.

    Local: written in a temporary folder renamed into place, so a reader never sees a part.
    S3: the three files, then meta.json last (read_snapshot insists on it)."""
    target = storage.retrieval_dir(root, day, window_days)
    info = {
        "day": day.isoformat(),
        "window_days": window_days,
        "rows": {v: snap[v].num_rows for v in VARIANTS},
        "ranking_version": RANKING_VERSION,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(meta or {}),
    }
    if storage.is_s3(target):
        storage.remove(target)
        folder = target
    else:
        folder = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    for variant in VARIANTS:
        write_parquet(snap[variant], storage.join(folder, f"{variant}.parquet"))
    storage.write_text(storage.join(folder, "meta.json"), json.dumps(info, indent=2) + "\n")
    if folder != target:
        storage.remove(target)
        os.replace(storage.arrow_fs_for(folder)[1], storage.arrow_fs_for(target)[1])
    return target


def read_snapshot(root: str, day: dt.date, window_days: int) -> dict[str, pa.Table]:
    """The stored snapshot for (d, W); a clear error when it is missing, incomplete or ranked by
    an older rule (meta.json `ranking_version`, 1 when absent), which callers treat alike."""
    folder = storage.retrieval_dir(root, day, window_days)
    rebuild = f"python -m jobs.retrieve --set as_of={day} --set retrieval.window_days={window_days}"
    try:
        meta = storage.read_json(storage.join(folder, "meta.json"))  # written last
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no complete retrieval snapshot at {folder} (run {rebuild})"
        ) from None
    version = meta.get("ranking_version", 1)
    if version != RANKING_VERSION:
        raise FileNotFoundError(
            f"the retrieval snapshot at {folder} was ranked by ranking_version {version}, this "
            f"code ranks by {RANKING_VERSION} (docs/contracts.md): rebuild it ({rebuild})"
        )
    out = {}
    for variant, schema in zip(
        VARIANTS, (PAIR_SNAPSHOT, PAIR_SNAPSHOT, GLOBAL_SNAPSHOT), strict=True
    ):
        # pq directly, without partition discovery: the folder name `day=..._w=..` is no column.
        fs, path = storage.arrow_fs_for(storage.join(folder, f"{variant}.parquet"))
        out[variant] = pq.read_table(path, filesystem=fs, partitioning=None).cast(schema)
    return out


def retrieved_lists(
    snapshot: dict, variant: str, top: int, catalog: Catalog | None = None
) -> dict[tuple, list[int]]:
    """{(c1, c2): [c3, ...] (rank order, at most `top`)} of a snapshot's variant; `global` is
    keyed by c2 alone and answers every c1 (returned under (None, c2), with one successor more:
    it may hold c1, which rag_for drops). Successors outside `catalog` (what a prompt can name)
    are dropped before the cut, so a cluster since removed from the catalog gives its place to
    the next one. What a RAG prompt names, for the
    fine-tune's examples and for bulk inference alike (see rag_for)."""
    t = snapshot[variant]
    keyed = ("c1", "c2") if "c1" in t.column_names else ("c2",)
    if catalog is not None:
        t = t.filter(known_mask(t["c3"], catalog))
    t = t.sort_by([(k, "ascending") for k in keyed] + [("rank", "ascending")])
    keep = top + (len(keyed) == 1)
    out: dict[tuple, list[int]] = {}
    cols = [t[k].to_pylist() for k in keyed]
    for i, c3 in enumerate(t["c3"].to_pylist()):
        key = tuple(c[i] for c in cols) if len(keyed) == 2 else (None, cols[0][i])
        named = out.setdefault(key, [])
        if len(named) < keep:
            named.append(c3)
    return out


def rag_for(lists: dict, c1: int, c2: int, top: int) -> list[int]:
    """The retrieved successors a prompt for (c1, c2) names: the pair's own, else c2's, at most
    `top`. Never c1 or c2 (the answer is a novel cluster): c2's global successors can hold c1."""
    named = lists.get((c1, c2)) or lists.get((None, c2)) or []
    return [c for c in named if c not in (c1, c2)][:top]

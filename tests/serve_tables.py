"""Tiny published table versions for the Serve tests, written with the real publisher
(common.publish), with the expected answers stated by hand.

Ten clusters 0..9 named "Cluster <id>"; items "i<c>-<j>" (j = 0..4) belong to cluster c, and
top_items ranks them by j. V1 is the table below; V2 changes the answer for (1, 2).
"""

from __future__ import annotations

import pyarrow as pa

from common import publish, schemas, storage
from common.catalog import Catalog

N_CLUSTERS = 10
ITEMS_PER_CLUSTER = 5

V1_PAIRS = {
    (1, 2): ("llm", [(3, 0.5), (4, 0.25), (5, 0.125)]),
    (2, 3): ("frequency", [(4, 0.75), (1, 0.25)]),
    (3, 4): ("backoff", [(5, 1.0)]),
}
V2_PAIRS = {**V1_PAIRS, (1, 2): ("llm", [(6, 0.875), (3, 0.0625)])}
# c2 -> successors of c2 alone; -1 -> the global top.
BACKOFF = {2: [(1, 0.5), (6, 0.25), (7, 0.125)], -1: [(0, 0.5), (1, 0.25), (2, 0.125), (8, 0.0625)]}


def name(c: int) -> str:
    return f"Cluster {c}"


def write_version(root: str, version: str, pairs=V1_PAIRS, backoff=BACKOFF, swap=True) -> str:
    """Publish tables/<version>/ with common.publish (CURRENT moves when swap). Returns it."""
    rows = [
        (c1, c2, rank, c3, score, source)
        for (c1, c2), (source, answers) in pairs.items()
        for rank, (c3, score) in enumerate(answers, start=1)
    ]
    table = pa.Table.from_pylist(
        [dict(zip(schemas.TABLE.names, r, strict=True)) for r in rows], schema=schemas.TABLE
    )
    back = pa.table(
        {
            "c2": pa.array([c2 for c2, a in backoff.items() for _ in a], pa.int32()),
            "rank": pa.array(
                [r for a in backoff.values() for r in range(1, len(a) + 1)], pa.int16()
            ),
            "c3": pa.array([c for a in backoff.values() for c, _ in a], pa.int32()),
            "score": pa.array([s for a in backoff.values() for _, s in a], pa.float32()),
        }
    )
    ids = list(range(N_CLUSTERS))
    catalog = Catalog(tuple(ids), tuple(name(c) for c in ids), ("",) * N_CLUSTERS)
    item_rows = [(f"i{c}-{j}", c) for c in ids for j in range(ITEMS_PER_CLUSTER)]
    items = pa.table(
        {
            "item_id": [i for i, _ in item_rows],
            "cluster_id": pa.array([c for _, c in item_rows], pa.int32()),
        }
    )
    # Engagement falls with j, so top_items ranks i<c>-0 first.
    item_counts = items.append_column(
        "count", pa.array([100 - int(i.split("-")[1]) for i, _ in item_rows], pa.int64())
    )
    publish.write_version(
        root,
        version,
        table=table,
        backoff=back,
        catalog=catalog,
        manifest={"strategy": "test"},
        items=items,
        top_items=publish.build_top_items(item_counts, n=ITEMS_PER_CLUSTER),
    )
    if swap:
        storage.swap_current(root, version)
    return version


def expected(pairs, c1: int, c2: int, k: int) -> tuple[str, list[tuple[int, float]]]:
    """The answer the contract promises, worked out from the dicts above (not from Lookup)."""
    if (c1, c2) in pairs:
        source, answers = pairs[(c1, c2)]
        return source, answers[:k]
    # c2's successors, then the global top for what is left of k (scores never rise down it).
    picked, sources = [], []
    for key, source in ((c2, "backoff_c2"), (-1, "backoff_global")):
        for c, s in BACKOFF.get(key, []):
            if len(picked) < k and c not in (c1, c2) and c not in [p[0] for p in picked]:
                picked.append((c, min([s] + [p[1] for p in picked])))
                sources.append(source)
    return (sources[0], picked) if picked else ("empty", [])

"""Daily item counts written by jobs.aggregate, for grounding clusters in concrete items.

Layout: `<root>/stats/items/day=YYYY-MM-DD/part-0.parquet` with ITEM_COUNTS (day, cluster_id,
item_id as text, count) in every file, like the transition counts; readers pick days by folder.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import arrow_fs_for, join, list_dirs

ITEM_COUNTS = pa.schema([("day", pa.date32()), ("cluster_id", pa.int32()),
                         ("item_id", pa.string()), ("count", pa.int64())])


def items_dir(root: str) -> str:
    return join(root, "stats", "items")


def read_item_counts(
    root: str, start: dt.date | None = None, end: dt.date | None = None
) -> pa.Table:
    """Item counts of the days in [start, end) (either bound open when None)."""
    days = [dt.date.fromisoformat(n.split("=", 1)[1]) for n in list_dirs(items_dir(root))
            if n.startswith("day=")]
    days = [d for d in days if (start is None or d >= start) and (end is None or d < end)]
    fs, base = arrow_fs_for(items_dir(root))
    parts = []
    for day in days:
        folder = f"{base}/day={day.isoformat()}"
        for f in sorted(i.path for i in fs.get_file_info(pa.fs.FileSelector(folder))
                        if i.path.endswith(".parquet")):
            parts.append(pq.read_table(f, filesystem=fs, schema=ITEM_COUNTS))
    return pa.concat_tables(parts) if parts else ITEM_COUNTS.empty_table()

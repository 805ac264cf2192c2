"""Reading the daily transition counts (docs/contracts.md "Transitions").

Layout: `<root>/stats/transitions/day=YYYY-MM-DD/*.parquet`, every file with the full
schemas.TRANSITIONS columns (day included), one folder per UTC day so that an update only adds
folders. Readers select days by folder name and never open a day outside their window, which is
what keeps day d's events out of anything built for day d.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from common import schemas
from common.storage import arrow_fs_for, join, list_dirs, transitions_dir


def day_dir(root: str, day: dt.date) -> str:
    return join(transitions_dir(root), f"day={day.isoformat()}")


def list_days(root: str) -> list[dt.date]:
    """The days that have counts, in order."""
    return [
        dt.date.fromisoformat(name.split("=", 1)[1])
        for name in list_dirs(transitions_dir(root))
        if name.startswith("day=")
    ]


def read_transitions(
    root: str, start: dt.date | None = None, end: dt.date | None = None
) -> pa.Table:
    """Counts of the days in [start, end) (either bound open when None), schemas.TRANSITIONS."""
    days = [
        d for d in list_days(root) if (start is None or d >= start) and (end is None or d < end)
    ]
    if not days:
        return schemas.TRANSITIONS.empty_table()
    fs, base = arrow_fs_for(transitions_dir(root))
    parts = []
    for day in days:
        folder = f"{base}/day={day.isoformat()}"
        files = sorted(
            f.path
            for f in fs.get_file_info(pa.fs.FileSelector(folder))
            if f.type == pa.fs.FileType.File and f.path.endswith(".parquet")
        )
        for path in files:
            parts.append(pq.read_table(path, filesystem=fs, schema=schemas.TRANSITIONS))
    return pa.concat_tables(parts) if parts else schemas.TRANSITIONS.empty_table()


def top_pairs(events: pa.Table, max_pairs: int) -> list[tuple[int, int]]:
    """The (c1, c2) pairs with the most transitions in `events`, ties by pair, at most max_pairs:
    the held-out slice both the fine-tune's score and the publish guards look at."""
    if events.num_rows == 0:
        return []
    per = events.group_by(["c1", "c2"]).aggregate([("count", "sum")])
    order = sorted(
        zip(
            per["c1"].to_pylist(), per["c2"].to_pylist(), per["count_sum"].to_pylist(), strict=True
        ),
        key=lambda r: (-r[2], r[0], r[1]),
    )
    return [(a, b) for a, b, _ in order[:max_pairs]]

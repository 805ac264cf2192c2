"""`python -m jobs.retrieve`: the retrieval (RAG) snapshot for day d, the paper's fast refresh.

docs/contracts.md "Retrieval (RAG) snapshot for day d"; issue 3 item 1. Reads only the daily count
folders of [d - W, d) under `<root>/stats/transitions/` and writes
`<root>/retrieval/day=<d>_w=<W>/` (common/retrieval.py has the rankings and the layout).

Two engines give the same snapshot. The counts are already aggregated per day and triple, so a
14-day window is a few MB (it grows with clusters^3 x days, not with events): pyarrow on the
driver ranks it in well under a second, while starting Ray and scheduling a Ray Data read costs
seconds. `engine=auto` (the default) therefore uses pyarrow below `retrieval.ray_min_bytes` of
window files and Ray Data above it: `ray.data.read_parquet` over the window's files, each block
pre-aggregated per (c1, c2, c3) where it was read (`map_batches`), and only those partial sums
(bounded by the distinct triples) brought to the driver to be merged and ranked.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import pyarrow as pa

from common import retrieval, storage
from common.cli import InputError, job_parser, run_main
from common.config import Config
from common.transitions import list_days, read_transitions

log = logging.getLogger(__name__)
DAY = dt.timedelta(days=1)


def snapshot_day(cfg: Config, days: list[dt.date]) -> dt.date:
    """The day d: cfg.as_of, else the last day with counts + 1."""
    if cfg.as_of is not None:
        return cfg.as_of
    if not days:
        raise InputError(f"no transition counts under {cfg.root}: run jobs.aggregate first")
    return days[-1] + DAY


def window_files(root: str, days: list[dt.date]) -> tuple[list[str], int, pa.fs.FileSystem]:
    """(Parquet file paths of the given days, their total bytes, the filesystem to read them)."""
    fs, base = storage.arrow_fs_for(storage.transitions_dir(root))
    paths, size = [], 0
    for day in days:
        for info in fs.get_file_info(pa.fs.FileSelector(f"{base}/day={day.isoformat()}")):
            if info.type == pa.fs.FileType.File and info.path.endswith(".parquet"):
                paths.append(info.path)
                size += info.size or 0
    return sorted(paths), size, fs


def counts_with_ray(cfg: Config, paths: list[str], fs, day: dt.date) -> pa.Table:
    """Window counts per triple through Ray Data: read, pre-aggregate per block, merge."""
    import ray

    from common import schemas
    from common.rayinit import init_ray

    init_ray(cfg)
    W = cfg.retrieval.window_days
    ds = ray.data.read_parquet(paths, filesystem=fs, schema=schemas.TRANSITIONS, partitioning=None)
    partials = ds.map_batches(
        lambda block: retrieval.partial_counts(block, day, W),
        batch_format="pyarrow",
        batch_size=None,
    )
    return retrieval.merge_counts(ray.get(partials.to_arrow_refs()))


def run(cfg: Config) -> dict:
    t0 = time.perf_counter()
    r = cfg.retrieval
    all_days = list_days(cfg.root)
    day = snapshot_day(cfg, all_days)
    start = day - r.window_days * DAY
    days = [d for d in all_days if start <= d < day]  # never a day >= d: no leakage
    if not all_days:
        raise InputError(f"no transition counts under {cfg.root}: run jobs.aggregate first")
    if not days:
        log.warning("no counts in [%s, %s): writing an empty snapshot", start, day)
    # Days of the window after the last counted one: counts not aggregated yet, not zero ones.
    uncounted = max(0, (day - all_days[-1]).days - 1)
    if days and uncounted:
        log.warning(
            "the window [%s, %s) runs %d day(s) past the last counted day %s: the snapshot "
            "holds %d of its %d days (run jobs.aggregate first for fresh counts)",
            start, day, uncounted, all_days[-1], len(days), r.window_days,
        )
    paths, size, fs = window_files(cfg.root, days)
    engine = r.engine if r.engine != "auto" else ("ray" if size >= r.ray_min_bytes else "arrow")
    if engine == "ray" and paths:
        counts = counts_with_ray(cfg, paths, fs, day)
    else:
        counts = retrieval.partial_counts(
            read_transitions(cfg.root, start, day), day, r.window_days
        )
    snap = retrieval.rank_snapshot(counts, r.top_n)
    meta = {"top_n": r.top_n, "engine": engine, "days_read": [d.isoformat() for d in days]}
    path = retrieval.write_snapshot(cfg.root, day, r.window_days, snap, meta)
    freq = snap["frequency"]
    pairs = len(set(zip(freq["c1"].to_pylist(), freq["c2"].to_pylist(), strict=True)))
    seconds = time.perf_counter() - t0
    log.info(
        "snapshot for %s (W=%d, %d pairs) in %.2fs: %s", day, r.window_days, pairs, seconds, path
    )
    return {
        "day": day.isoformat(),
        "window_days": r.window_days,
        "window": [start.isoformat(), day.isoformat()],
        "top_n": r.top_n,
        "engine": engine,
        "days_read": len(days),
        "days_past_counts": uncounted,
        "bytes_read": size,
        "triples": counts.num_rows,
        "pairs": pairs,
        "rows": {v: snap[v].num_rows for v in retrieval.VARIANTS},
        "path": path,
        "seconds": round(seconds, 3),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(
        "python -m jobs.retrieve",
        "Retrieval (RAG) snapshot for day d (as_of; default: the last day with counts + 1): per "
        "(c1, c2) the top successors by frequency and by trend in [d - W, d), and per c2 the "
        "global successors.",
        reads="<root>/stats/transitions/day=*/ for the days in [d - W, d) only "
        "(W = retrieval.window_days)",
        writes="<root>/retrieval/day=<d>_w=<W>/{frequency,trend,global}.parquet and meta.json",
    )
    return run_main(parser, run, argv)


if __name__ == "__main__":
    main()

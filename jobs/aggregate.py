"""Daily novel-transition counts from the interactions, with Ray Data (docs/contracts.md
"Transitions").

Per user: order events by (ts, input order), collapse consecutive repeats, and count every
(s[i-2], s[i-1], s[i]) whose s[i] is novel, on the UTC day of the event that produced s[i].

Shape of the job (engine `dataset`, the default): Ray tasks read the files (a run of files per
task, keeping each row's input order, common/inputs.py) into a Ray Dataset; a shard column
`hash(user) % P`; `groupby("shard").map_groups(...)` so each call gets every event of about 1/P of
the users and does the sequence work vectorised with numpy (common/sequences.py); then a second
groupby by day sums the per-shard partial counts and writes one file per day. Both groupbys use
Ray Data's task-based sort shuffle: the default hash shuffle's aggregator actors cost tens of
seconds on 2 cores. Engine `tasks` (common/transition_tasks.py) runs the same dataflow as plain
Ray tasks: ~1.5x faster end to end on 10M events and 2 cores, and a few seconds less per small
incremental run (what jobs.pipeline does every tick). Both give the same counts
(tests/integration/aggregate). Nothing but small summaries reaches the driver.

Incremental: each shard also writes its users' last two clusters (after collapsing) under
`<root>/stats/state/`. A later run reads only events of days after the last processed day,
prepends each user's state as two pseudo-events that sort first, and so produces exactly the
counts a full run would, without touching old days. Each run writes a new state version; once
meta.json names it, the previous one goes, and so does one that a run which failed or was killed
a day or more before left behind.

Bounded by `as_of` (what `jobs.pipeline tick --as-of D` sets): only days before D are counted.
Events of D or later (today's partial day at a 02:30 tick, a client clock stamped 2030) are held:
left in the log, reported as `held_for_later`, and neither `last_day` nor the per-user state moves
past them, so a later run counts them exactly once. Without as_of every event counts, as before.

A full run (aggregate.incremental=false, or no meta.json) replaces the day folders it writes and
removes the ones it did not, and the old state, only after it succeeded: bad input leaves the
previous counts and meta.json as they were.

A log that jobs.simulate or jobs.ingest rewrote from other settings or data since the counts were
made (the fingerprint in its marker differs from meta.json's `inputs_source`) is refused by an
incremental run: its days would all look counted, and the old log's counts would stay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from common import storage
from common.cli import InputError, job_parser, keys_help, run_main
from common.config import Config
from common.drift import drift_series, plot_drift
from common.input_targets import written_source
from common.inputs import read_events, read_items, storage_env
from common.item_counts import items_dir
from common.sequences import (
    sequence_transitions,
    state_events,
    sum_day,
    sum_items_day,
    user_shard,
    write_day_file,
)
from common.tables_io import write_parquet
from common.transitions import read_transitions

log = logging.getLogger(__name__)
EPOCH = dt.date(1970, 1, 1)


# Ray wiring: the functions below run inside Ray Data tasks.
def _add_shard(batch: pa.Table, n: int) -> pa.Table:
    return batch.append_column("shard", pa.array(user_shard(batch["user_id"], n)))


def _process_shard(group: pa.Table, state_dir: str, env: dict) -> pa.Table:
    os.environ.update(env)
    counts, state = sequence_transitions(group.drop_columns(["shard"]))
    shard = group["shard"][0].as_py()
    write_parquet(state, storage.join(state_dir, f"shard-{shard:05d}.parquet"))
    return counts


def _write_transitions_day(group: pa.Table, root: str, env: dict) -> pa.Table:
    os.environ.update(env)
    table = sum_day(group)
    day = table["day"][0].as_py()
    write_day_file(table, storage.join(storage.transitions_dir(root), f"day={day}"))
    return pa.table({"day": [day], "rows": [table.num_rows],
                     "transitions": [pc.sum(table["count"]).as_py()]})


def _write_items_day(group: pa.Table, root: str, env: dict) -> pa.Table:
    os.environ.update(env)
    t = sum_items_day(group)
    day = t["day"][0].as_py()
    write_day_file(t, storage.join(items_dir(root), f"day={day}"))
    return pa.table({"day": [day], "rows": [t.num_rows]})


def _read_meta(root: str) -> dict | None:
    uri = storage.join(storage.aggregate_state_dir(root), "meta.json")
    return storage.read_json(uri) if storage.exists(uri) else None


def _load_state(ray, root: str, meta: dict, user_type: pa.DataType):
    """The carried per-user state as a Dataset of pseudo-events in the events' user type."""
    fs, path = storage.arrow_fs_for(storage.join(storage.aggregate_state_dir(root),
                                                 meta["version"]))
    ds = ray.data.read_parquet(path, filesystem=fs)

    def to_events(batch: pa.Table) -> pa.Table:
        ev = state_events(batch)
        if ev["user_id"].type != user_type:
            ev = ev.set_column(0, "user_id", pc.cast(ev["user_id"], user_type))
        return ev

    return ds.map_batches(to_events, batch_format="pyarrow", batch_size=None)


def _cast_users(batch: pa.Table) -> pa.Table:
    return batch.set_column(0, "user_id", pc.cast(batch["user_id"], pa.string()))


def _count_with_dataset(ray, cfg: Config, items: pa.Table, meta: dict | None,
                        after_day: int | None, before_day: int | None, state_dir: str, n: int,
                        env: dict):
    """The Ray Data engine: groupby(shard).map_groups, then groupby(day).map_groups writes."""
    root = cfg.root
    events = read_events(cfg.inputs.interactions, items, after_day=after_day,
                         before_day=before_day, min_tasks=n)
    counts = events.counts
    string_users = events.user_type == pa.string() or (meta or {}).get("user_type") == "string"
    if counts.get("events", 0) == 0:
        return counts, None, string_users, set()
    ds = events.ds
    if string_users and events.user_type != pa.string():
        ds = ds.map_batches(_cast_users, batch_format="pyarrow", batch_size=None)
    if meta:
        user_type = pa.string() if string_users else pa.int64()
        ds = ds.union(_load_state(ray, root, meta, user_type))
    partial = (
        ds.map_batches(_add_shard, fn_kwargs={"n": n}, batch_format="pyarrow", batch_size=None)
        .groupby("shard", num_partitions=n)
        .map_groups(_process_shard, fn_kwargs={"state_dir": state_dir, "env": env},
                    batch_format="pyarrow")
    )
    by_day = max(1, min(n, counts["max_day"] - counts["min_day"] + 1))
    items_written = (events.item_counts.groupby("day", num_partitions=by_day)
                     .map_groups(_write_items_day, fn_kwargs={"root": root, "env": env},
                                 batch_format="pyarrow"))
    # The item counts are independent of the sequences: run both pipelines at once so the
    # small one fills the gaps of the big one instead of queueing behind it.
    with ThreadPoolExecutor(1) as pool:
        items_done = pool.submit(items_written.materialize)
        written = (partial.groupby("day", num_partitions=by_day)
                   .map_groups(_write_transitions_day, fn_kwargs={"root": root, "env": env},
                               batch_format="pyarrow").to_arrow_refs())
        items_days = items_done.result().to_arrow_refs()
    item_days = {d for t in ray.get(items_days) for d in t["day"].to_pylist()}
    return counts, pa.concat_tables(ray.get(written)), string_users, item_days


@contextlib.contextmanager
def _sort_shuffle(ray):
    """Ray Data's task-based sort shuffle for this job's groupbys, restored afterwards.

    The default (hash shuffle with aggregator actors) starts an actor pool per groupby: on a
    2-core machine that took 40-75 s for a 20k-event log where the sort shuffle takes ~1 s.
    """
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    before = ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        ctx.shuffle_strategy = before


def write_drift_report(cfg: Config) -> dict:
    """drift.json and drift.png under reports/<report>/ from all counts written so far."""
    report = drift_series(read_transitions(cfg.root), cfg.aggregate.drift_window_days,
                          cfg.aggregate.drift_min_support, top=5)
    folder = storage.report_dir(cfg.root, cfg.report)
    storage.write_json(storage.join(folder, "drift.json"), report)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "drift.png")
        plot_drift(report, local)
        fs, path = storage.fsspec_for(storage.join(folder, "drift.png"))
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        fs.put_file(local, path)
    return report


def remove_stale(root: str, version: str, transition_days: set, item_days: set) -> None:
    """After a full run succeeded: the day folders it did not write and every other state version.

    A full run owns everything under stats/, so no stale day may survive it; but it removes them
    only now, so that a run that failed on bad input lost nothing.
    """
    for folder, days in ((storage.transitions_dir(root), transition_days),
                         (items_dir(root), item_days)):
        keep = {f"day={d}" for d in days}
        for name in storage.list_dirs(folder):
            if name not in keep:
                storage.remove(storage.join(folder, name))
    state = storage.aggregate_state_dir(root)
    for name in storage.list_dirs(state):
        if name != version:
            storage.remove(storage.join(state, name))


# A state version this much older than ours cannot be a run still writing: one that failed.
ORPHAN_AGE = dt.timedelta(hours=24)
STATE_STAMP = "%Y%m%dT%H%M%S"  # a state version is v-<start, UTC, in this format>-<6 hex>


def version_time(name: str) -> dt.datetime | None:
    """When a state version `v-YYYYmmddTHHMMSS-xxxxxx` was started (None if not so named)."""
    try:
        return dt.datetime.strptime(name.split("-")[1], STATE_STAMP).replace(tzinfo=dt.UTC)
    except (IndexError, ValueError):
        return None


def remove_other_states(root: str, version: str, previous: str | None = None) -> None:
    """After meta.json names `version`: the `previous` one it replaced, and any other `v-*`
    version started over ORPHAN_AGE before ours.

    A run that failed or was killed after writing shards and before moving meta.json (or right
    after, before removing the previous version) left a version that nothing reads; a later run
    that succeeds sweeps it. Younger ones stay: they may be a bare jobs.aggregate still writing
    beside this one (a tick's lock does not cover it). The version meta.json names now is kept
    even if it is not ours.
    """
    state = storage.aggregate_state_dir(root)
    keep = {version, (_read_meta(root) or {}).get("version")}
    born = version_time(version) or dt.datetime.now(dt.UTC)
    for name in storage.list_dirs(state):
        if not name.startswith("v-") or name in keep:
            continue
        started = version_time(name)
        if name == previous or started is None or started < born - ORPHAN_AGE:
            storage.remove(storage.join(state, name))


def _day(days: int) -> str:
    return (EPOCH + dt.timedelta(days=days)).isoformat()


def run(cfg: Config) -> dict:
    from common.rayinit import init_ray

    started = time.time()
    ray = init_ray(cfg)
    phases = {"ray_init": round(time.time() - started, 1)}
    root, ac = cfg.root, cfg.aggregate
    meta = _read_meta(root) if ac.incremental else None
    source = written_source(cfg.inputs.interactions)
    # Counts made before logs carried a fingerprint have none to compare: taken as they are.
    if meta and "inputs_source" in meta and meta["inputs_source"] != source:
        raise InputError(
            f"inputs.interactions {cfg.inputs.interactions} was rewritten (by jobs.simulate or "
            f"jobs.ingest, from other settings or files) after the counts under {root}/stats "
            f"were made from it, so adding to them would mix two logs. Use a new root "
            f"(--set root=PATH), delete {root} if it is disposable (`make clean` for the "
            f"demo's data/), or recount this log in full: --set aggregate.incremental=false"
        )
    after_day = (dt.date.fromisoformat(meta["last_day"]) - EPOCH).days if meta else None
    before_day = (cfg.as_of - EPOCH).days if cfg.as_of else None
    items = read_items(cfg.inputs.items, cfg.inputs.clusters)
    env = storage_env()
    n = ac.num_partitions or max(2, 2 * int(ray.cluster_resources().get("CPU", 2)))
    version = f"v-{dt.datetime.now(dt.UTC):{STATE_STAMP}}-{uuid.uuid4().hex[:6]}"
    state_dir = storage.join(storage.aggregate_state_dir(root), version)
    t0 = time.time()
    if ac.engine == "tasks":
        from common.transition_tasks import count_with_tasks

        state_uri = (storage.join(storage.aggregate_state_dir(root), meta["version"])
                     if meta else None)
        counts, written, string_users, item_days = count_with_tasks(
            ray, cfg.inputs.interactions, items, after_day, before_day, state_uri,
            (meta or {}).get("user_type"), root, state_dir, n, env)
    else:
        with _sort_shuffle(ray):
            counts, written, string_users, item_days = _count_with_dataset(
                ray, cfg, items, meta, after_day, before_day, state_dir, n, env)
    for warning in counts.get("warnings", []):
        log.warning(warning)
    summary = {"mode": "incremental" if meta else "full", "engine": ac.engine,
               "as_of": cfg.as_of.isoformat() if cfg.as_of else None,
               "events_read": counts.get("rows", 0), "events_used": counts.get("events", 0),
               "files": counts["files"],
               "dropped": {k: counts.get(k, 0) for k in
                           ("null_user_id", "null_item_id", "null_ts", "bad_ts", "unknown_item")},
               "skipped_old_days": counts.get("skipped_old_days", 0),
               "held_for_later": counts.get("held_for_later", 0),
               "days_processed": 0, "transitions_written": 0, "rows_written": 0}
    if counts.get("held_for_later"):
        summary["held_days"] = [_day(counts["held_min_day"]), _day(counts["held_max_day"])]
    if counts.get("warnings"):
        summary["warnings"] = counts["warnings"]
    if written is not None:
        last_day = EPOCH + dt.timedelta(days=counts["max_day"])
        # The pointer moves only after every day and every state shard is written.
        storage.write_json(storage.join(storage.aggregate_state_dir(root), "meta.json"),
                           {"last_day": last_day.isoformat(), "version": version,
                            "user_type": "string" if string_users else "int",
                            "inputs_source": source})
        if meta:
            remove_other_states(root, version, meta.get("version"))
        else:
            remove_stale(root, version, set(written["day"].to_pylist()), item_days)
        today = dt.datetime.now(dt.UTC).date()
        if cfg.as_of is None and last_day > today:
            log.warning("events up to %s are stamped after today (%s): later runs skip every day "
                        "up to %s; set as_of (jobs.pipeline tick --as-of) to hold them",
                        last_day, today, last_day)
        summary.update(days_processed=written.num_rows,
                       rows_written=int(pc.sum(written["rows"]).as_py() or 0),
                       transitions_written=int(pc.sum(written["transitions"]).as_py() or 0),
                       last_day=last_day.isoformat())
    elif meta is None and storage.list_dirs(storage.transitions_dir(root)):
        log.warning("full run counted no event: the previous counts under %s are kept",
                    storage.transitions_dir(root))
    phases["count_and_write"] = round(time.time() - t0, 1)
    t0 = time.time()
    drift = write_drift_report(cfg)
    phases["drift_report"] = round(time.time() - t0, 1)
    summary["drift_mean_jaccard"] = drift["mean_jaccard"]
    summary["phase_seconds"] = phases
    summary["seconds"] = round(time.time() - started, 1)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(
        "python -m jobs.aggregate",
        "Count daily novel cluster transitions per docs/contracts.md with Ray Data, incrementally. "
        "With as_of=D (set by jobs.pipeline tick --as-of D) only days before D are counted; "
        "events of D or later stay in the log for a later run and are reported as "
        "held_for_later. A full run (aggregate.incremental=false) replaces the previous counts "
        "only once it has succeeded. An incremental run refuses a log that jobs.simulate or "
        "jobs.ingest rewrote from other settings or data since the counts were made.",
        reads="inputs.interactions (Parquet or CSV, file or folder, local or s3://), "
        "inputs.items, inputs.clusters (when it exists: every cluster_id of the items must be "
        "in it); <root>/stats/state/ (the carried per-user state) when incremental",
        writes="<root>/stats/transitions/day=YYYY-MM-DD/part-0.parquet (day, c1, c2, c3, count), "
        "<root>/stats/items/day=YYYY-MM-DD/part-0.parquet (day, cluster_id, item_id, count), "
        "<root>/stats/state/, <root>/reports/<report>/drift.json and drift.png",
    )
    keys = keys_help("", "inputs", "ray", "aggregate")
    parser.epilog += "\n\nKeys (--set KEY=VALUE), defaults:\n" + keys
    return run_main(parser, run, argv)


if __name__ == "__main__":
    main()

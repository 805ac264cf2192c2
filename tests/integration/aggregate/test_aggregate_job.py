"""jobs.aggregate end to end on the shared Ray session: exact counts, re-runs, incremental, S3."""

from __future__ import annotations

import os
import shutil

import pyarrow.parquet as pq
import pytest
from aggregate_cases import (
    EDGE_DROPS,
    EDGE_ROWS,
    ITEM_CLUSTER,
    clusters_table,
    items_table,
    write_log,
)
from aggregate_reference import reference_counts, table_counts

from common import storage
from common.cli import InputError
from common.config import load_config
from common.item_counts import read_item_counts
from common.tables_io import read_table, write_parquet
from common.transitions import list_days, read_transitions
from jobs import aggregate, simulate

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def config(root, interactions, items, *extra):
    return load_config(None, [f"root={root}", f"inputs.interactions={interactions}",
                              f"inputs.items={items}", "aggregate.num_partitions=2",
                              "aggregate.drift_min_support=1", *extra])


ENGINES = pytest.mark.parametrize("engine", ["tasks", "dataset"])


@ENGINES
def test_edge_log_exact_counts_and_outputs(ray_session, tmp_path, root, engine, engines_run):
    # Two partition folders, two files each: files by path, then rows, give the tie order.
    logdir = tmp_path / "log"
    rows = write_log(str(logdir / "day=a"), EDGE_ROWS[:12], "parquet", "timestamp_plus2")
    rows += write_log(str(logdir / "day=b"), EDGE_ROWS[12:], "parquet", "epoch")
    write_parquet(items_table(), str(tmp_path / "items.parquet"))
    cfg = config(root, str(logdir), str(tmp_path / "items.parquet"), f"aggregate.engine={engine}")
    summary = aggregate.run(cfg)
    assert summary["engine"] == engine and engines_run == [engine]  # that engine counted
    assert table_counts(read_transitions(root)) == reference_counts(rows, ITEM_CLUSTER)
    assert summary["dropped"] == EDGE_DROPS
    assert summary["events_read"] == len(EDGE_ROWS) and summary["transitions_written"] == 7
    for day in list_days(root):
        files = os.listdir(f"{root}/stats/transitions/day={day}")
        assert files == ["part-0.parquet"]
        schema = pq.read_schema(f"{root}/stats/transitions/day={day}/part-0.parquet")
        assert schema.names == ["day", "c1", "c2", "c3", "count"]
    items = read_item_counts(root)
    assert sum(items["count"].to_pylist()) == summary["events_used"] == len(EDGE_ROWS) - 4
    assert items.schema.field("item_id").type == "string"
    assert os.path.getsize(f"{root}/reports/default/drift.png") > 1000
    assert storage.read_json(f"{root}/reports/default/drift.json")["top"] == 5
    # A full re-run on the same inputs writes the same bytes.
    before = open(f"{root}/stats/transitions/day=2026-03-02/part-0.parquet", "rb").read()
    aggregate.run(cfg.model_copy(update={"aggregate": cfg.aggregate.model_copy(
        update={"incremental": False})}))
    assert open(f"{root}/stats/transitions/day=2026-03-02/part-0.parquet", "rb").read() == before


def test_csv_string_ids_and_garbage_timestamps_are_counted(ray_session, tmp_path, root):
    rows = write_log(str(tmp_path / "log"), EDGE_ROWS, "csv", "iso", string_ids=True, n_files=1)
    text = open(tmp_path / "log" / "part-0.csv").read().splitlines()
    text += ['"u1","3","not a time","x"', '"u9","3","2026-13-45T99:00:00","x"']
    (tmp_path / "log" / "part-0.csv").write_text("\n".join(text) + "\n")
    rows += [("u1", "3", "not a time"), ("u9", "3", "2026-13-45T99:00:00")]
    write_parquet(items_table(string_ids=True), str(tmp_path / "items.parquet"))
    summary = aggregate.run(config(root, str(tmp_path / "log" / "part-0.csv"),
                                   str(tmp_path / "items.parquet")))
    assert summary["dropped"] == {**EDGE_DROPS, "bad_ts": 2}
    assert table_counts(read_transitions(root)) == reference_counts(rows, ITEM_CLUSTER)


@ENGINES
def test_incremental_equals_full(ray_session, tmp_path, engine, engines_run):
    src = tmp_path / "sim"
    sim_cfg = load_config(None, [f"root={src}", "simulate.n_events=20000", "simulate.n_users=300",
                                 "simulate.days=6", "simulate.n_clusters=12",
                                 "simulate.items_per_cluster=3"])
    simulate.run(sim_cfg)
    days = sorted(d for d in os.listdir(sim_cfg.inputs.interactions) if d.startswith("day="))
    live = tmp_path / "live"
    for d in days[:4]:
        shutil.copytree(f"{sim_cfg.inputs.interactions}/{d}", live / d)
    inc_root, full_root = str(tmp_path / "inc"), str(tmp_path / "full")
    eng = f"aggregate.engine={engine}"
    first = aggregate.run(config(inc_root, str(live), sim_cfg.inputs.items, eng))
    old_file = f"{inc_root}/stats/transitions/{days[1]}/part-0.parquet"
    old_mtime = os.path.getmtime(old_file)
    for d in days[4:]:
        shutil.copytree(f"{sim_cfg.inputs.interactions}/{d}", live / d)
    second = aggregate.run(config(inc_root, str(live), sim_cfg.inputs.items, eng))
    assert engines_run == [engine, engine]  # both incremental runs on the engine under test
    aggregate.run(config(full_root, str(live), sim_cfg.inputs.items))
    assert (first["mode"], second["mode"]) == ("full", "incremental")
    assert first["days_processed"] == 4 and second["days_processed"] == 2
    assert second["skipped_old_days"] == first["events_used"]
    assert os.path.getmtime(old_file) == old_mtime
    inc, full = read_transitions(inc_root), read_transitions(full_root)
    assert inc.equals(full) and sum(full["count"].to_pylist()) > 5000
    rows = []
    for d in days:
        t = pq.read_table(f"{sim_cfg.inputs.interactions}/{d}/part-0.parquet")
        rows += [(r["user_id"], r["item_id"], r["ts"]) for r in t.to_pylist()]
    items = read_table(sim_cfg.inputs.items).to_pylist()
    assert table_counts(full) == reference_counts(rows, {str(r["item_id"]): r["cluster_id"]
                                                         for r in items})
    # Nothing new: an incremental run writes nothing and keeps the counts.
    third = aggregate.run(config(inc_root, str(live), sim_cfg.inputs.items, eng))
    assert third["days_processed"] == 0 and read_transitions(inc_root).equals(full)


@pytest.mark.s3
def test_inputs_and_root_on_s3(ray_session, tmp_path, s3_bucket):
    rows = write_log(str(tmp_path / "log"), EDGE_ROWS, "parquet", "timestamp_naive")
    fs, _ = storage.fsspec_for(s3_bucket)
    fs.put(str(tmp_path / "log") + "/", f"{s3_bucket[5:]}/in/log/", recursive=True)
    write_parquet(items_table(), f"{s3_bucket}/in/items.parquet")
    write_parquet(clusters_table(), f"{s3_bucket}/in/clusters.parquet")
    root = f"{s3_bucket}/run"
    summary = aggregate.run(config(root, f"{s3_bucket}/in/log", f"{s3_bucket}/in/items.parquet"))
    assert summary["dropped"] == EDGE_DROPS
    assert table_counts(read_transitions(root)) == reference_counts(rows, ITEM_CLUSTER)
    assert storage.exists(f"{root}/reports/default/drift.png")
    assert storage.exists(f"{root}/stats/state/meta.json")


def test_movielens_counts_match_reference(ray_session, tmp_path):
    """A real log with many tied timestamps (bulk rating sessions): ties keep file order."""
    from jobs import ingest

    cfg = load_config(None, [f"root={tmp_path}", "ingest.min_rating=3.5",
                             "aggregate.num_partitions=3"])
    ingest.run(cfg)
    summary = aggregate.run(cfg)
    log = pq.read_table(f"{tmp_path}/inputs/interactions/part-0.parquet").to_pylist()
    items = read_table(cfg.inputs.items).to_pylist()
    expected = reference_counts([(r["user_id"], r["item_id"], r["ts"]) for r in log],
                                {str(r["item_id"]): r["cluster_id"] for r in items})
    assert table_counts(read_transitions(str(tmp_path))) == expected
    assert summary["transitions_written"] == sum(expected.values()) > 10_000


def test_a_log_rewritten_from_other_settings_is_not_added_to_old_counts(ray_session, tmp_path):
    """Re-simulating into a used root replaces the log; counting only its new days on top of
    the old log's counts would mix two logs (and count none of them: every day looks done).
    The same settings again are the same log and stay incremental."""
    root = str(tmp_path)
    sim = ["simulate.n_events=3000", "simulate.n_users=60", "simulate.days=3"]

    def cfg(*extra):
        return load_config(None, [f"root={root}", "aggregate.num_partitions=2",
                                  "aggregate.engine=tasks", *sim, *extra])

    simulate.run(cfg("simulate.n_clusters=12"))
    first = aggregate.run(cfg())
    counted = read_transitions(root)
    simulate.run(cfg("simulate.n_clusters=12"))  # the same log again
    assert aggregate.run(cfg())["days_processed"] == 0
    simulate.run(cfg("simulate.n_clusters=8"))  # another log
    with pytest.raises(InputError, match=r"was rewritten .* aggregate\.incremental=false"):
        aggregate.run(cfg())
    assert read_transitions(root).equals(counted)  # nothing changed under stats/
    full = aggregate.run(cfg("aggregate.incremental=false"))
    assert first["days_processed"] == full["days_processed"] == 3
    recounted = read_transitions(root)
    assert max(recounted["c3"].to_pylist()) < 8 <= max(counted["c3"].to_pylist())
    assert aggregate.run(cfg())["mode"] == "incremental"  # the new log's counts go on from here

    # Counts made before logs carried fingerprints (meta.json without one) are taken as they are.
    meta_uri = f"{root}/stats/state/meta.json"
    meta = storage.read_json(meta_uri)
    del meta["inputs_source"]
    storage.write_json(meta_uri, meta)
    simulate.run(cfg("simulate.n_clusters=8", "simulate.seed=3"))
    assert aggregate.run(cfg())["mode"] == "incremental"

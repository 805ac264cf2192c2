"""What the aggregate may count: days before as_of only, timestamps in a sane range, items that map
to one known cluster each. Pure Python (the read task's function called directly), no Ray."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from aggregate_cases import EDGE_ROWS, ITEM_CLUSTER, UTC, clusters_table, item_of, items_table
from aggregate_cases import write_log as write_rows
from aggregate_reference import reference_counts, table_counts

from common.cli import InputError
from common.inputs import clean_events, merge_counts, parse_ts, read_batch, read_items
from common.sequences import sequence_transitions, state_events, sum_day
from common.tables_io import write_parquet
from jobs.aggregate import EPOCH, remove_stale

MAR1, MAR2, MAR3 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)
Y2030 = dt.datetime(2030, 1, 1, tzinfo=UTC)
# A client clock stamped 2030: user 4 goes on to cluster 5, a new user 6 starts there.
ROWS = [*EDGE_ROWS, (4, item_of(5), Y2030), (6, item_of(0), Y2030)]
S = 1_772_323_200  # 2026-03-01T00:00:00Z in epoch seconds
US = S * 1_000_000


def days(d: dt.date) -> int:
    return (d - EPOCH).days


def read_log(folder: str, after=None, before=None) -> tuple[pa.Table, dict]:
    """Both files of a log through the read task's function, as either engine reads them."""
    batch = [(k, f"{folder}/part-{k}.parquet") for k in range(2)]
    counts, events, _ = read_batch(batch, items_table(), after, {}, before)
    return events, counts


def finish(partial: pa.Table) -> pa.Table:
    by_day = sorted(set(partial["day"].to_pylist()))
    return pa.concat_tables([sum_day(partial.filter(pc.equal(partial["day"], d))) for d in by_day])


def test_tick_holds_today_and_the_future_then_counts_them_once(tmp_path):
    folder = str(tmp_path / "log")
    rows = write_rows(folder, ROWS, "parquet", "epoch")
    # Tick for Mar 2 (what `pipeline tick --as-of 2026-03-02` asks for): Mar 1 only.
    events, tick = read_log(folder, before=days(MAR2))
    assert tick["held_for_later"] == 4  # user 4's two Mar 2 events and both 2030 events
    assert (tick["held_min_day"], tick["held_max_day"]) == (days(MAR2), days(Y2030.date()))
    assert tick["max_day"] == days(MAR1) and tick["events"] == len(EDGE_ROWS) - 4 - 2
    first, state = sequence_transitions(events)
    # The next tick, for Mar 3, continues from Mar 1's state and still holds 2030.
    events, nxt = read_log(folder, after=tick["max_day"], before=days(MAR3))
    assert nxt["skipped_old_days"] == tick["events"] and nxt["held_for_later"] == 2
    assert nxt["events"] == 2 and nxt["max_day"] == days(MAR2)
    second, _ = sequence_transitions(pa.concat_tables([state_events(state), events]))
    got = table_counts(finish(pa.concat_tables([first, second])))
    expected = {k: v for k, v in reference_counts(rows, ITEM_CLUSTER).items() if k[0] < MAR3}
    # (0, 1, 2) on Mar 2 needs user 4's Mar 1 events, carried as state.
    assert got == expected and expected[(MAR2, 0, 1, 2)] == 1 and len(expected) == 7
    # A one-shot run bounded by Mar 3 counts the same.
    events, once = read_log(folder, before=days(MAR3))
    assert table_counts(finish(sequence_transitions(events)[0])) == expected
    assert once["held_for_later"] == 2 and "skipped_old_days" not in once


def test_without_as_of_everything_counts():
    table = pa.table({"user_id": [1, 1], "item_id": [1, 3], "ts": [S, int(Y2030.timestamp())]})
    items = items_table()
    events, counts, _ = clean_events(
        table, 0, items["item_id"].combine_chunks(), items["cluster_id"].to_numpy()
    )
    assert counts["events"] == 2 and "held_for_later" not in counts
    assert counts["max_day"] == days(Y2030.date())


def test_out_of_range_timestamps_are_bad_not_wrapped():
    ints = pa.array([S, S * 1000, S * 10**9, -1, 2**62, None], pa.int64())
    assert parse_ts(ints).to_pylist() == [US, None, None, None, None, None]
    assert parse_ts(pa.array([S, 2**64 - 1], pa.uint64())).to_pylist() == [US, None]
    floats = pa.array([S + 0.5, 1e300, -1e300, float("inf"), float("nan"), None])
    assert parse_ts(floats).to_pylist() == [US + 500_000, None, None, None, None, None]
    # A timestamp column in seconds whose value overflows int64 once scaled to microseconds.
    stamps = pa.array([S, 2**40, -(2**40)], pa.timestamp("s"))
    assert parse_ts(stamps).to_pylist() == [US, None, None]
    text = pa.array(["1e300", "3000-01-01T00:00:00Z", "1969-12-31T23:59:59Z", str(S)])
    assert parse_ts(text).to_pylist() == [None, None, None, US]
    # The bounds: 1970-01-01 is in, 2100-01-01 is out.
    edge = pa.array([0, 4_102_444_799, 4_102_444_800], pa.int64())
    assert parse_ts(edge).to_pylist() == [0, 4_102_444_799_000_000, None]
    dates = pa.array([dt.date(2026, 3, 1), dt.date(1969, 12, 31), dt.date(2100, 1, 1)])
    assert parse_ts(dates).to_pylist() == [US, None, None]


@pytest.mark.parametrize("scale,unit", [(1000, "milliseconds"), (10**9, "nanoseconds")])
def test_a_file_in_the_wrong_unit_is_bad_ts_with_a_hint(tmp_path, scale, unit):
    ts = [(S + 60 * i) * scale for i in range(9)] + [S]  # one stray row in seconds
    pq.write_table(
        pa.table({"user_id": [1] * 10, "item_id": [1, 3] * 5, "ts": ts}),
        tmp_path / "part-0.parquet",
    )
    counts, events, _ = read_batch([(0, str(tmp_path / "part-0.parquet"))], items_table(), None, {})
    assert counts["bad_ts"] == 9 and counts["events"] == 1 and events.num_rows == 1
    [warning] = counts["warnings"]
    assert warning.startswith(str(tmp_path / "part-0.parquet"))
    assert "9 of 10 ts values" in warning and f"epoch {unit}" in warning
    # A few bad rows in a good file are counted but do not warn.
    table = pa.table({"user_id": [1] * 10, "item_id": [1] * 10, "ts": [S] * 8 + [S * 1000] * 2})
    items = items_table()
    _, counts, _ = clean_events(
        table, 0, items["item_id"].combine_chunks(), items["cluster_id"].to_numpy()
    )
    assert counts["bad_ts"] == 2 and "warnings" not in counts


def test_merge_counts_keeps_day_bounds_and_warnings():
    total = merge_counts({}, {"events": 2, "min_day": 5, "held_max_day": 9, "warnings": ["a"]})
    merge_counts(total, {"events": 1, "min_day": 3, "held_max_day": 7, "warnings": ["b"]})
    assert total == {"events": 3, "min_day": 3, "held_max_day": 9, "warnings": ["a", "b"]}


def write_items(tmp_path, item_ids, cluster_ids, typ="int64") -> str:
    path = str(tmp_path / "items.parquet")
    write_parquet(pa.table({"item_id": item_ids, "cluster_id": pa.array(cluster_ids, typ)}), path)
    return path


def test_items_in_two_clusters_are_refused(tmp_path):
    path = write_items(
        tmp_path, [1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6], [0, 1, 1, 0, 1, 2, 3, 0, 2, 4, 5]
    )
    with pytest.raises(InputError) as e:
        read_items(path)
    assert "4 item_id(s) map to more than one cluster_id" in str(e.value)
    assert "3 -> [0, 1], 4 -> [2, 3], 5 -> [0, 2], ..." in str(e.value)
    # Exact duplicates are tolerated and kept once; the cluster id becomes int32.
    items = read_items(write_items(tmp_path, ["a", "b", "b"], [0, 1, 1]))
    assert sorted(items.to_pylist(), key=str) == [
        {"item_id": "a", "cluster_id": 0},
        {"item_id": "b", "cluster_id": 1},
    ]
    assert items.schema.field("cluster_id").type == pa.int32()


def test_cluster_ids_outside_int32_or_the_catalog_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"1 cluster_id value\(s\) outside int32, e.g. 4294967296"):
        read_items(write_items(tmp_path, [1, 2], [0, 2**32]))
    with pytest.raises(InputError, match="cluster_id must be integers"):
        read_items(write_items(tmp_path, [1], [1.5], "float64"))
    clusters = str(tmp_path / "clusters.parquet")
    write_parquet(clusters_table(), clusters)  # ids 0..5
    path = write_items(tmp_path, [1, 2, 3, 4], [0, 7, 9, 7])
    with pytest.raises(
        InputError,
        match=r"2 cluster_id value\(s\) not in the clusters catalog"
        r" .*clusters.parquet, e.g. 7, 9",
    ):
        read_items(path, clusters)
    # No catalog yet (it is optional for the aggregate): the ids are not checked against it.
    assert read_items(path, str(tmp_path / "missing.parquet")).num_rows == 4
    assert read_items(write_items(tmp_path, [1, 2], [0, 5]), clusters).num_rows == 2


def test_remove_stale_keeps_what_the_full_run_wrote(tmp_path):
    root = str(tmp_path)
    for sub in (
        "transitions/day=2026-03-01",
        "transitions/day=2026-03-02",
        "items/day=2026-03-01",
        "items/day=2026-03-09",
        "state/v-old",
        "state/v-new",
    ):
        (tmp_path / "stats" / sub).mkdir(parents=True)
        (tmp_path / "stats" / sub / "part-0.parquet").write_bytes(b"x")
    (tmp_path / "stats" / "state" / "meta.json").write_text("{}")
    remove_stale(root, "v-new", {MAR1}, {MAR1})
    left = sorted(str(p.relative_to(tmp_path / "stats")) for p in (tmp_path / "stats").glob("*/*"))
    assert left == [
        "items/day=2026-03-01",
        "state/meta.json",
        "state/v-new",
        "transitions/day=2026-03-01",
    ]


def test_a_cold_cluster_gets_as_many_read_tasks_as_partitions():
    """A cluster whose workers scale from zero shows no CPU when the job starts: 4 read tasks
    per CPU would be 4 in all, and the autoscaler would start one worker for them.
    aggregate.num_partitions (sized to the cluster's max) sets the floor instead."""
    from types import SimpleNamespace

    from common.inputs import file_batches

    cold = SimpleNamespace(cluster_resources=lambda: {"CPU": 0.0})
    files = [f"day={i:03d}/part-0.parquet" for i in range(1000)]
    assert len(file_batches(cold, files)) == 4
    batches = file_batches(cold, files, min_tasks=256)
    assert len(batches) == 256 and min(map(len, batches)) >= 3
    assert [f for run in batches for _, f in run] == files  # every file once, in path order
    warm = SimpleNamespace(cluster_resources=lambda: {"CPU": 128.0})
    assert len(file_batches(warm, files, min_tasks=256)) == 512
    assert len(file_batches(warm, files[:10], min_tasks=256)) == 10  # no empty task

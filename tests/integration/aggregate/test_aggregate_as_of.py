"""jobs.aggregate bounded by as_of (what a pipeline tick sets), and a full run that fails on bad
input losing nothing, on the shared Ray session with both engines."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aggregate_cases import EDGE_ROWS, ITEM_CLUSTER, UTC, clusters_table, item_of, items_table
from aggregate_cases import write_log as write_rows
from aggregate_reference import reference_counts, table_counts

from common import storage
from common.cli import InputError
from common.config import load_config
from common.item_counts import read_item_counts
from common.tables_io import write_parquet
from common.transitions import list_days, read_transitions
from jobs import aggregate

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

MAR1, MAR2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
Y2030 = dt.datetime(2030, 1, 1, tzinfo=UTC)
ROWS = [*EDGE_ROWS, (4, item_of(5), Y2030), (6, item_of(0), Y2030)]


def snapshot(root: str) -> dict:
    """Every file under stats/ with its bytes."""
    out = {}
    for folder, _, files in os.walk(f"{root}/stats"):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


@pytest.mark.parametrize("engine", ["tasks", "dataset"])
def test_as_of_holds_later_days_and_a_failed_full_run_keeps_the_counts(
    ray_session, tmp_path, root, engine, engines_run
):
    log = tmp_path / "log"
    rows = write_rows(str(log), ROWS, "parquet", "epoch")
    write_parquet(items_table(), str(tmp_path / "items.parquet"))
    write_parquet(clusters_table(), str(tmp_path / "clusters.parquet"))
    base = [
        f"root={root}",
        f"inputs.interactions={log}",
        f"inputs.items={tmp_path / 'items.parquet'}",
        f"inputs.clusters={tmp_path / 'clusters.parquet'}",
        "aggregate.num_partitions=2",
        "aggregate.drift_min_support=1",
        f"aggregate.engine={engine}",
    ]
    expected = reference_counts(rows, ITEM_CLUSTER)

    def run(*extra):
        return aggregate.run(load_config(None, [*base, *extra]))

    # A tick for Mar 2 counts Mar 1 only; Mar 2 and the 2030 clock stay in the log.
    tick = run(f"as_of={MAR2}")
    assert tick["held_for_later"] == 4 and tick["held_days"] == ["2026-03-02", "2030-01-01"]
    assert tick["last_day"] == "2026-03-01" and list_days(root) == [MAR1]
    assert tick["events_used"] == len(EDGE_ROWS) - 4 - 2
    mar1 = {k: v for k, v in expected.items() if k[0] == MAR1}
    assert table_counts(read_transitions(root)) == mar1 and sum(mar1.values()) == 5
    # The next tick counts Mar 2 exactly once, from the carried state.
    nxt = run(f"as_of={MAR2 + dt.timedelta(days=1)}")
    assert nxt["mode"] == "incremental" and nxt["skipped_old_days"] == tick["events_used"]
    assert nxt["held_for_later"] == 2 and nxt["last_day"] == "2026-03-02"
    before_2030 = {k: v for k, v in expected.items() if k[0] <= MAR2}
    assert table_counts(read_transitions(root)) == before_2030 and len(before_2030) == 7
    assert sum(read_item_counts(root)["count"].to_pylist()) == len(EDGE_ROWS) - 4

    # A full run that meets a bad file changes nothing under stats/, meta.json included.
    kept = snapshot(root)
    pq.write_table(pa.table({"user_id": [1], "item_id": [1]}), log / "part-9.parquet")
    with pytest.raises(InputError, match="part-9.parquet is missing column"):
        run("aggregate.incremental=false")
    assert snapshot(root) == kept
    # Fixed input: the full run for Mar 2 replaces everything, Mar 2 and the old state go.
    (log / "part-9.parquet").unlink()
    full = run("aggregate.incremental=false", f"as_of={MAR2}")
    assert full["mode"] == "full" and full["held_for_later"] == 4
    assert list_days(root) == [MAR1] and table_counts(read_transitions(root)) == mar1
    assert sorted(os.listdir(f"{root}/stats/items")) == ["day=2026-03-01"]
    state = storage.read_json(f"{root}/stats/state/meta.json")
    assert sorted(os.listdir(f"{root}/stats/state")) == sorted(["meta.json", state["version"]])
    assert state["last_day"] == "2026-03-01"
    assert set(engines_run) == {engine} and len(engines_run) >= 3  # every run used that engine

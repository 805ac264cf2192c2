"""The per-user state versions under stats/state/: an incremental run leaves only the one
meta.json names, so a version that a failed or killed run left behind does not stay forever."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import pytest
from aggregate_cases import EDGE_ROWS, ITEM_CLUSTER, clusters_table, items_table, write_log
from aggregate_reference import reference_counts, table_counts

from common import storage
from common.config import load_config
from common.tables_io import write_parquet
from common.transitions import read_transitions
from jobs import aggregate

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

MAR2, MAR3 = dt.date(2026, 3, 2), dt.date(2026, 3, 3)


def test_an_incremental_run_removes_an_orphan_state_version(ray_session, tmp_path, root):
    log = tmp_path / "log"
    rows = write_log(str(log), EDGE_ROWS, "parquet", "epoch")
    write_parquet(items_table(), str(tmp_path / "items.parquet"))
    write_parquet(clusters_table(), str(tmp_path / "clusters.parquet"))
    base = [f"root={root}", f"inputs.interactions={log}",
            f"inputs.items={tmp_path / 'items.parquet'}",
            f"inputs.clusters={tmp_path / 'clusters.parquet'}", "aggregate.num_partitions=2",
            "aggregate.drift_min_support=1", "aggregate.engine=tasks"]
    aggregate.run(load_config(None, [*base, f"as_of={MAR2}"]))
    state = f"{root}/stats/state"
    served = storage.read_json(f"{state}/meta.json")["version"]
    # What a run killed after writing its shards, before moving meta.json, leaves: a version
    # named like the others, holding a real shard, that meta.json does not name.
    orphan = f"{state}/v-20260302T023000-dead00"
    shard = sorted(os.listdir(f"{state}/{served}"))[0]
    os.makedirs(orphan)
    shutil.copy(f"{state}/{served}/{shard}", f"{orphan}/{shard}")

    nxt = aggregate.run(load_config(None, [*base, f"as_of={MAR3}"]))
    assert nxt["mode"] == "incremental" and nxt["last_day"] == "2026-03-02"
    meta = storage.read_json(f"{state}/meta.json")
    assert sorted(os.listdir(state)) == sorted(["meta.json", meta["version"]])
    assert meta["version"] not in (served, os.path.basename(orphan))
    # The counts are those of one run over Mar 1 and Mar 2 (the state read was meta.json's).
    assert table_counts(read_transitions(root)) == reference_counts(rows, ITEM_CLUSTER)

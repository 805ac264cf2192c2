"""Bad input gives one clear line, never a bare traceback: missing columns, empty files."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aggregate_cases import items_table

from common.cli import InputError
from common.config import load_config
from common.tables_io import write_parquet
from jobs import aggregate

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


@pytest.fixture
def items(tmp_path):
    path = str(tmp_path / "items.parquet")
    write_parquet(items_table(), path)
    return path


def args(root, interactions, items):
    return ["--set", f"root={root}", "--set", f"inputs.interactions={interactions}",
            "--set", f"inputs.items={items}", "--set", "aggregate.num_partitions=2"]


def test_missing_column_is_named(ray_session, tmp_path, root, items):
    log = tmp_path / "log"
    log.mkdir()
    pq.write_table(pa.table({"user_id": [1], "item_id": [1], "ts": [1]}), log / "a.parquet")
    pq.write_table(pa.table({"user": [1], "item_id": [1]}), log / "b.parquet")
    with pytest.raises(InputError, match=r"b\.parquet is missing column\(s\): user_id, ts"):
        aggregate.run(load_config(None, [a for a in args(root, log, items) if a != "--set"]))
    with pytest.raises(SystemExit) as e:
        aggregate.main(args(root, log, items))
    assert "missing column(s): user_id, ts" in str(e.value) and "\n" not in str(e.value)


def test_empty_file_and_missing_input(ray_session, tmp_path, root, items):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SystemExit) as e:
        aggregate.main(args(root, tmp_path / "empty.csv", items))
    assert str(e.value).startswith("error: interactions file is empty")
    with pytest.raises(SystemExit) as e:
        aggregate.main(args(root, tmp_path / "nowhere", items))
    assert "interactions not found" in str(e.value)
    (tmp_path / "header.csv").write_text("user_id,item_id,ts\n")
    with pytest.raises(SystemExit) as e:
        aggregate.main(args(root, tmp_path / "header.csv", items))
    assert "interactions hold no rows" in str(e.value)


def test_corrupt_file_bad_items_and_all_garbage_ts(ray_session, tmp_path, root, items):
    log = tmp_path / "log"
    log.mkdir()
    (log / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SystemExit) as e:
        aggregate.main(args(root, log, items))
    assert str(e.value).startswith("error: cannot read interactions file") and "a.parquet" in str(
        e.value)
    (log / "a.parquet").unlink()
    pq.write_table(pa.table({"user_id": [1, 1, 2], "item_id": [1, 3, 5],
                             "ts": ["yesterday", "2026-02-30T10:00:00", None]}), log / "a.parquet")
    bad_items = str(tmp_path / "bad_items.parquet")
    write_parquet(pa.table({"item_id": [1], "cluster": [0]}), bad_items)
    with pytest.raises(SystemExit) as e:
        aggregate.main(args(root, log, bad_items))
    assert "cluster_id" in str(e.value) and "\n" not in str(e.value)
    # Every timestamp unparseable: nothing to count, every row dropped and counted by reason.
    summary = aggregate.main(args(root, log, items))
    assert summary["dropped"]["bad_ts"] == 2 and summary["dropped"]["null_ts"] == 1
    assert summary["events_used"] == 0 and summary["transitions_written"] == 0

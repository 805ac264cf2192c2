"""Day files and other Parquet files are replaced in one step: a reader (or a crash) in the middle
of a rewrite finds the old file or the new one, never a missing day or half a file."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import tables_io
from common.sequences import write_day_file
from common.tables_io import read_table, write_parquet


def test_a_crash_while_rewriting_a_day_keeps_the_old_file(tmp_path, monkeypatch):
    folder = str(tmp_path / "day=2026-03-01")
    old = pa.table({"count": [1, 2, 3]})
    write_day_file(old, folder)

    def dies_half_way(table, where, filesystem=None):
        with filesystem.open_output_stream(where) as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tables_io.pq, "write_table", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_day_file(pa.table({"count": [9]}), folder)
    monkeypatch.undo()
    assert os.listdir(folder) == ["part-0.parquet"]  # no temporary file left either
    assert read_table(folder).equals(old)


def test_a_rewritten_day_holds_only_the_new_file(tmp_path):
    folder = tmp_path / "day=2026-03-01"
    folder.mkdir()
    pq.write_table(pa.table({"count": [5]}), folder / "part-00003.parquet")  # another layout
    write_day_file(pa.table({"count": [7]}), str(folder))
    assert os.listdir(folder) == ["part-0.parquet"]
    assert read_table(str(folder))["count"].to_pylist() == [7]
    write_parquet(pa.table({"count": [8]}), str(folder / "part-0.parquet"))  # in place
    assert read_table(str(folder))["count"].to_pylist() == [8]

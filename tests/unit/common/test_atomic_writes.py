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


@pytest.mark.s3
def test_a_day_on_s3_with_a_folder_object_keeps_its_new_file(s3_bucket):
    """The AWS console's "Create folder" leaves an empty `day=.../` object, which S3 lists as an
    entry of the folder itself; the rewrite must not take the folder, new file and all, with it."""
    from common import storage

    folder = f"{s3_bucket}/stats/transitions/day=2026-03-01"
    fs, path = storage.fsspec_for(folder)
    fs.pipe_file(path + "/", b"")
    write_parquet(pa.table({"count": [1]}), f"{folder}/part-00007.parquet")  # another layout
    write_day_file(pa.table({"count": [4]}), folder)
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(path))
    assert "part-0.parquet" in names and "part-00007.parquet" not in names
    assert read_table(folder)["count"].to_pylist() == [4]

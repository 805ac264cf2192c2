"""Read and write small Arrow tables (Parquet or CSV, file or directory, local or s3://).

Small means driver-sized: catalogs, snapshots, published tables. Large logs go through Ray Data.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from common.cli import InputError
from common.storage import arrow_fs_for, fsspec_for, is_s3, local_swap


def _format_of(path: str) -> str:
    return "csv" if path.endswith((".csv", ".csv.gz")) else "parquet"


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    """One Arrow table from a Parquet/CSV file or a directory of them (hive partitions allowed)."""
    fs, path = arrow_fs_for(uri)
    info = fs.get_file_info(path)
    if info.type == pa.fs.FileType.NotFound:
        raise InputError(f"input not found: {uri}")
    if info.type == pa.fs.FileType.File and info.size == 0:
        raise InputError(f"input file is empty: {uri}")
    fmt = _format_of(path)
    if info.type == pa.fs.FileType.Directory:
        names = [
            f.path
            for f in fs.get_file_info(pa.fs.FileSelector(path, recursive=True))
            if f.type == pa.fs.FileType.File and not f.base_name.startswith((".", "_"))
        ]
        if not names:
            raise InputError(f"input directory holds no files: {uri}")
        fmt = _format_of(sorted(names)[0])
    try:
        if fmt == "csv":
            dataset = pads.dataset(path, format="csv", filesystem=fs)
        else:
            dataset = pads.dataset(path, format="parquet", filesystem=fs, partitioning="hive")
        return dataset.to_table(columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"cannot read {uri}: {e}") from e


def write_parquet(table: pa.Table, uri: str) -> None:
    """Write one Parquet file; parent folders are made as needed (local). A reader finds the old
    file or the new one, never a part: an S3 PUT is atomic, and a local file goes through
    `storage.local_swap`."""
    fs, path = arrow_fs_for(uri)
    if is_s3(uri):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=fs)
        return
    with local_swap(path) as tmp:
        pq.write_table(table, tmp, filesystem=fs)


def write_csv(table: pa.Table, uri: str) -> None:
    """Write one CSV file, gzipped for a `.gz` name; parent folders are made as needed."""
    fs, path = arrow_fs_for(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:  # the compression is detected from the name
        pacsv.write_csv(table, f)


def read_csv_file(uri: str) -> pa.Table:
    fs, path = fsspec_for(uri)
    with fs.open(path, "rb") as f:
        return pacsv.read_csv(f)

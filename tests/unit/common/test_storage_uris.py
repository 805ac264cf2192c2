"""URIs the storage layer accepts: local paths, file:// as local, s3://; any other scheme is an
error instead of a local folder named after it."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from common import storage
from common.config import ConfigError
from common.tables_io import read_table, write_parquet


def test_file_uri_is_the_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a mis-read `file:/...` folder would appear
    uri = f"file://{tmp_path}/root"
    assert storage.fsspec_for(uri)[1] == f"{tmp_path}/root"
    assert storage.arrow_fs_for(uri + "/")[1] == f"{tmp_path}/root"
    storage.write_json(storage.join(uri, "stats", "meta.json"), {"a": 1})
    assert storage.read_json(f"{tmp_path}/root/stats/meta.json") == {"a": 1}
    write_parquet(pa.table({"x": [1, 2]}), storage.join(uri, "t.parquet"))
    assert read_table(f"{tmp_path}/root/t.parquet")["x"].to_pylist() == [1, 2]
    assert storage.list_dirs(uri) == ["stats"] and storage.exists(uri)
    assert sorted(os.listdir(tmp_path)) == ["root"]


@pytest.mark.parametrize("uri", ["gs://bucket/x", "hdfs://nn:8020/x", "abfs://c@a/x"])
def test_other_schemes_are_refused(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scheme = uri.split("://")[0] + "://"
    for call in (storage.fsspec_for, storage.arrow_fs_for, storage.exists):
        with pytest.raises(ConfigError, match=f"unsupported storage scheme '{scheme}'"):
            call(uri)
    with pytest.raises(ConfigError):
        storage.write_json(storage.join(uri, "meta.json"), {})
    assert os.listdir(tmp_path) == []


def test_file_uri_with_a_host_is_refused():
    with pytest.raises(ConfigError, match="file:///absolute/path"):
        storage.fsspec_for("file://otherhost/data")

"""The shared config and storage layer: overrides, unknown keys, {root}, local and S3 pointers."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from common import storage
from common.config import ConfigError, load_config


def test_defaults_file_then_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("root: /data/x\ninfer:\n  batch_size: 8\n")
    cfg = load_config(path, ["infer.batch_size=32", "retrieval.window_days=7"])
    assert cfg.root == "/data/x"
    assert cfg.infer.batch_size == 32
    assert cfg.retrieval.window_days == 7
    assert cfg.inputs.interactions == "/data/x/inputs/interactions"  # {root} expanded
    assert load_config().root != "/data/x"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["infer.batchsize=3"], "infer.batchsize"),
        (["nosuch=1"], "nosuch"),
        (["infer=3"], "infer"),
        (["retrieval.window_days=abc"], "retrieval.window_days"),
        # Inference could name only the snapshot's top_n successors.
        (["prompt.rag_top=3", "retrieval.top_n=2"], "prompt.rag_top=3 names more successors"),
    ],
)
def test_bad_keys_and_values_name_the_key(overrides, named):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert named in str(e.value)


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  nmae_or_path: x\n")
    with pytest.raises(ConfigError, match="model.nmae_or_path"):
        load_config(path)


def test_missing_or_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def _pointer_roundtrip(root: str) -> None:
    assert storage.read_current(root) is None
    storage.swap_current(root, "v1")
    assert storage.read_current(root) == "v1"
    storage.swap_current(root, "v2")
    assert storage.read_current(root) == "v2"
    storage.write_json(storage.join(storage.table_dir(root, "v2"), "manifest.json"), {"a": 1})
    assert storage.read_json(storage.join(storage.table_dir(root, "v2"), "manifest.json")) == {
        "a": 1
    }
    assert storage.list_dirs(storage.tables_dir(root)) == ["v2"]


def test_printed_config_is_a_starting_file_that_follows_its_root(tmp_path, capsys):
    """README: save `python -m common.config` as your config. Its inputs at their default must
    move with the root the file is later used with, and the rest must load back unchanged."""
    from common.config import main

    main(["--set", "root=/tmp/first", "--set", "inputs.items=/data/items.parquet"])
    path = tmp_path / "mine.yaml"
    path.write_text(capsys.readouterr().out)
    cfg = load_config(str(path), ["root=s3://bucket/prod"])
    assert cfg.inputs.interactions == "s3://bucket/prod/inputs/interactions"
    assert cfg.inputs.clusters == "s3://bucket/prod/inputs/clusters.parquet"
    assert cfg.inputs.items == "/data/items.parquet"  # set by hand: kept
    assert load_config(str(path)).model_dump() == load_config(
        None, ["root=/tmp/first", "inputs.items=/data/items.parquet"]
    ).model_dump()


def test_local_pointer_swap(root):
    _pointer_roundtrip(root)


@pytest.mark.s3
def test_s3_pointer_swap(s3_bucket):
    _pointer_roundtrip(f"{s3_bucket}/prefix")
    fs, path = storage.arrow_fs_for(f"{s3_bucket}/prefix/tables/CURRENT")
    with fs.open_input_stream(path) as f:  # pyarrow sees what s3fs wrote, through moto
        assert f.read() == b"v2\n"


def _newest_write_of_two_files(base: str) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    assert storage.newest_write(f"{base}/run") is None
    storage.write_text(f"{base}/run/a/x", "1")
    storage.write_text(f"{base}/run/b/y", "2")
    written = storage.newest_write(f"{base}/run")
    after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    assert written.tzinfo is not None and before <= written <= after


def test_newest_write_local(tmp_path):
    _newest_write_of_two_files(str(tmp_path))
    old = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    for name in ("a/x", "b/y"):
        os.utime(tmp_path / "run" / name, (old, old))
    newer = old + 3600
    os.utime(tmp_path / "run" / "b" / "y", (newer, newer))
    assert storage.newest_write(str(tmp_path / "run")) == dt.datetime(2026, 1, 1, 1, tzinfo=dt.UTC)


@pytest.mark.s3
def test_newest_write_s3(s3_bucket):
    _newest_write_of_two_files(f"{s3_bucket}/stamps")

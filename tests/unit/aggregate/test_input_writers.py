"""jobs.simulate and jobs.ingest as writers of the inputs: they replace only what this project
wrote, write the format the target's name says, and drop (and count) rows the contract cannot
hold instead of crashing."""

from __future__ import annotations

import gzip
import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from common.cli import InputError
from common.config import load_config
from common.inputs import list_input_files, read_batch, read_items
from common.tables_io import read_table
from jobs import ingest, simulate

TINY_SIM = ["simulate.n_events=600", "simulate.n_users=20", "simulate.days=2",
            "simulate.n_clusters=8", "simulate.items_per_cluster=2"]
MARKER = "_written_by_next_interest.json"  # jobs.MARKER, spelled out for the record
RATINGS = ("userId,movieId,rating,timestamp\n"
           "1,10,4.0,964982703\n"
           "1,20,3.0,964982704\n"
           "2,20,4.5,964982707\n"
           "2,30,2.0,964982708\n")
BAD_RATINGS = ("userId,movieId,rating,timestamp\n"
               "1,10,4.0,964982703\n"
               "1,20,3.0,964982704\n"
               "1,50,4.0\n"              # truncated line: no timestamp
               ",10,5.0,964982705\n"     # empty user id
               "2,x,4.0,964982706\n"     # not a number
               "2,20,4.5,964982707\n"
               "2,30,2.0,964982708\n")
MOVIES = ("movieId,title,genres\n"
          "10,A (1995),Action\n"
          "20,B (1996),Drama\n"
          "30,C (1997),Action\n")


def ingest_cfg(tmp_path, *sets, ratings=RATINGS, movies=MOVIES):
    """A tiny MovieLens-style source under tmp_path and a config that ingests it."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "ratings.csv").write_text(ratings)
    (src / "movies.csv").write_text(movies)
    return load_config(None, [f"root={tmp_path}/root", f"ingest.source={src}",
                              "ingest.min_cluster_items=1", *sets])


def foreign_log(path):
    """A folder of someone else's log: Parquet partitions, nothing of ours."""
    (path / "day=2026-01-01").mkdir(parents=True)
    pq.write_table(pa.table({"user_id": [7], "item_id": [1], "ts": [1]}),
                   path / "day=2026-01-01" / "part-00000.parquet")
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def aggregate_reads(interactions, items_uri):
    """What jobs.aggregate's readers see (common.inputs, no Ray): (files, counters)."""
    files = list_input_files(interactions)
    counts, _, _ = read_batch(list(enumerate(files)), read_items(items_uri), None, {})
    return files, counts


@pytest.mark.parametrize("job", ["simulate", "ingest"])
def test_a_foreign_interactions_folder_is_refused_and_left_intact(tmp_path, job):
    log = tmp_path / "prod-log"
    before = foreign_log(log)
    if job == "simulate":
        cfg = load_config(None, [f"root={tmp_path}/root", f"inputs.interactions={log}", *TINY_SIM])
    else:
        cfg = ingest_cfg(tmp_path, f"inputs.interactions={log}")
    with pytest.raises(InputError, match=rf"inputs.interactions {log} holds data that "
                                         r"jobs.simulate or jobs.ingest did not write"):
        (simulate if job == "simulate" else ingest).run(cfg)
    assert sorted(str(p.relative_to(log)) for p in log.rglob("*")) == before
    assert not os.path.exists(cfg.inputs.items)  # refused before anything was written


def test_foreign_items_and_log_files_are_refused(tmp_path):
    items = tmp_path / "catalog" / "items.parquet"
    items.parent.mkdir()
    pq.write_table(pa.table({"item_id": [1], "cluster_id": pa.array([0], pa.int32())}), items)
    cfg = load_config(None, [f"root={tmp_path}/root", f"inputs.items={items}", *TINY_SIM])
    with pytest.raises(InputError, match=rf"inputs.items {items} is a file that"):
        simulate.run(cfg)
    assert pq.read_table(items).num_rows == 1
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,ts\n7,1,1\n")
    with pytest.raises(InputError, match=rf"inputs.interactions {log} is a file that"):
        ingest.run(ingest_cfg(tmp_path, f"inputs.interactions={log}"))
    assert log.read_text() == "user_id,item_id,ts\n7,1,1\n"


def test_a_folder_written_by_either_job_is_replaced(tmp_path):
    cfg = load_config(None, [f"root={tmp_path}/root", *TINY_SIM, "simulate.days=3"])
    simulate.run(cfg)
    simulate.run(load_config(None, [f"root={tmp_path}/root", *TINY_SIM]))  # 2 days now
    log = cfg.inputs.interactions
    assert sorted(os.listdir(log)) == [MARKER, "day=2026-01-01", "day=2026-01-02"]
    s = ingest.run(ingest_cfg(tmp_path))  # the same default target, written by simulate
    assert sorted(os.listdir(log)) == [MARKER, "part-0.parquet"]
    assert read_table(log).num_rows == s["interactions"]
    simulate.run(cfg)  # and back: ingest's folder is ours too
    assert len(os.listdir(log)) == 4


def test_aggregate_reads_a_folder_with_the_marker(tmp_path):
    cfg = load_config(None, [f"root={tmp_path}/root", *TINY_SIM])
    s = simulate.run(cfg)
    assert os.path.exists(os.path.join(cfg.inputs.interactions, MARKER))
    files, counts = aggregate_reads(cfg.inputs.interactions, cfg.inputs.items)
    assert [f.rsplit("/", 1)[-1] for f in files] == ["part-0.parquet"] * 2
    assert counts["rows"] == counts["events"] == s["events"]
    assert read_table(cfg.inputs.interactions).num_rows == s["events"]  # pyarrow datasets too


@pytest.mark.parametrize("name", ["log.csv", "log.csv.gz"])
def test_a_csv_target_gets_csv_that_aggregate_reads(tmp_path, name):
    target = f"{tmp_path}/out/{name}"
    cfg = ingest_cfg(tmp_path, f"inputs.interactions={target}")
    s = ingest.run(cfg)
    raw = open(target, "rb").read()
    text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode()
    assert text.splitlines()[0] == '"user_id","item_id","ts","rating"'  # not Parquet bytes
    table = pacsv.read_csv(target)
    assert table.column("ts").to_pylist()[0] == 964982703
    files, counts = aggregate_reads(target, cfg.inputs.items)
    assert files == [target] and counts["rows"] == counts["events"] == s["interactions"]
    ingest.run(cfg)  # its own file (sidecar) is replaced
    assert pacsv.read_csv(target).equals(table)


def test_rows_with_missing_fields_are_dropped_and_counted(tmp_path):
    cfg = ingest_cfg(tmp_path, ratings=BAD_RATINGS)
    s = ingest.run(cfg)
    assert s["ratings"] == 7 and s["interactions"] == 4 and s["users"] == 2
    assert s["dropped"] == {"ratings_missing_field": 3, "movies_missing_id": 0,
                            "movies_repeated_id": 0}
    log = read_table(cfg.inputs.interactions)
    assert log.column("user_id").to_pylist() == [1, 1, 2, 2]  # file order kept
    assert log.schema.field("ts").type == pa.int64()


def test_a_movie_listed_twice_keeps_its_first_row(tmp_path):
    # The same id twice with other genres would put item 20 in two clusters.
    movies = MOVIES.replace("20,B (1996),Drama\n", "20,B (1996),Drama\n20,B again,Comedy\n")
    cfg = ingest_cfg(tmp_path, movies=movies)
    s = ingest.run(cfg)
    assert s["items"] == 3 and s["dropped"]["movies_repeated_id"] == 1
    items = read_items(cfg.inputs.items, cfg.inputs.clusters)  # the aggregate's check passes
    names = dict(zip(*read_table(cfg.inputs.clusters).select(["cluster_id", "name"]).to_pydict()
                     .values(), strict=True))
    got = {i: names[c] for i, c in zip(*items.to_pydict().values(), strict=True)}
    assert got == {10: "Action", 20: "Drama", 30: "Action"}


def test_the_same_rules_hold_on_s3(s3_bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(use_listings_cache=False)
    prod = f"{s3_bucket}/logs/interactions"
    fs.pipe(f"{prod[5:]}/day=2026-01-01/part-00000.parquet", b"not ours")
    sets = [f"root={s3_bucket}/ni", *TINY_SIM]
    with pytest.raises(InputError, match="did not write"):
        simulate.run(load_config(None, [*sets, f"inputs.interactions={prod}"]))
    assert fs.cat(f"{prod[5:]}/day=2026-01-01/part-00000.parquet") == b"not ours"
    cfg = load_config(None, [*sets, "simulate.days=3"])
    simulate.run(cfg)
    simulate.run(load_config(None, sets))  # ours: replaced, 2 days now
    assert read_table(cfg.inputs.interactions).num_rows > 0
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(cfg.inputs.interactions[5:])) == [
        MARKER, "day=2026-01-01", "day=2026-01-02"]
    target = f"{s3_bucket}/ni/log.csv"
    ingest.run(ingest_cfg(tmp_path, f"root={s3_bucket}/ni", f"inputs.interactions={target}"))
    ingest.run(ingest_cfg(tmp_path, f"root={s3_bucket}/ni", f"inputs.interactions={target}"))
    assert fs.cat(target[5:]).startswith(b'"user_id"')


@pytest.mark.parametrize("name", ["log.tsv", "log.tsv.gz"])
def test_a_tab_separated_log_reads_by_its_name(tmp_path, name):
    """`.tsv` was parsed with commas: every row one column, "missing column(s)"."""
    from common.inputs import read_file

    text = "user_id\titem_id\tts\nu1\t7\t2026-01-01T10:00:00\nu2\t8\t1767261600\n"
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    table = read_file(str(path))
    assert table.column_names == ["user_id", "item_id", "ts"]
    assert table["user_id"].to_pylist() == ["u1", "u2"] and table["item_id"].to_pylist() == [7, 8]


def test_a_copied_or_touched_root_and_a_half_written_file_stay_replaceable(tmp_path):
    """The sidecar fingerprints content, not mtime: `cp -r` (new mtimes) and `touch` keep the
    files ours; a run killed between the pending sidecar and the file leaves them replaceable;
    an edited file is someone else's."""
    import shutil
    import subprocess
    import time

    from common.input_targets import mark_written

    a = tmp_path / "a"
    simulate.run(load_config(None, [f"root={a}", *TINY_SIM]))
    b = tmp_path / "b"
    time.sleep(0.01)
    subprocess.run(["cp", "-r", str(a), str(b)], check=True)  # no mtimes kept
    os.utime(b / "inputs" / "items.parquet")
    again = load_config(None, [f"root={b}", *TINY_SIM])
    simulate.run(again)  # replaced: the copy's files are still ours
    # A kill between the pending sidecar and the write: the leftovers are replaceable.
    os.remove(again.inputs.clusters)
    mark_written(again.inputs.clusters, "jobs.simulate", folder=False, pending=True)
    shutil.copy(again.inputs.items, again.inputs.clusters)  # a half-written stand-in
    simulate.run(again)
    with open(again.inputs.items, "ab") as f:  # edited since: not ours any more
        f.write(b"x")
    with pytest.raises(InputError, match="inputs.items .* did not write, or that changed"):
        simulate.run(again)


@pytest.mark.parametrize("name", ["log", "log.csv"])
def test_the_log_records_what_it_was_made_from(tmp_path, name):
    """jobs.aggregate compares this fingerprint with its counts': the same source and settings
    give the same one (re-running the demo keeps its counts), another source or setting not."""
    from common.input_targets import written_source

    target = f"{tmp_path}/out/{name}"
    ingest.run(ingest_cfg(tmp_path, f"inputs.interactions={target}"))
    first = written_source(target)
    ingest.run(ingest_cfg(tmp_path, f"inputs.interactions={target}"))
    assert written_source(target) == first and len(first) == 16
    ingest.run(ingest_cfg(tmp_path, f"inputs.interactions={target}", "ingest.min_rating=4"))
    assert written_source(target) != first
    more = RATINGS + "3,10,5.0,964982709\n"
    ingest.run(ingest_cfg(tmp_path, f"inputs.interactions={target}", ratings=more))
    assert written_source(target) not in (first, None)
    assert written_source(f"{tmp_path}/nothing") is None
    sim = load_config(None, [f"root={tmp_path}/sim", *TINY_SIM])
    simulate.run(sim)
    made = written_source(sim.inputs.interactions)
    simulate.run(load_config(None, [f"root={tmp_path}/sim", *TINY_SIM, "simulate.seed=1"]))
    assert made and written_source(sim.inputs.interactions) not in (made, None)


def test_a_min_rating_that_keeps_nothing_is_an_error_and_replaces_nothing(tmp_path):
    ingest.run(ingest_cfg(tmp_path))
    cfg = ingest_cfg(tmp_path, "ingest.min_rating=100")
    before = read_table(cfg.inputs.interactions)
    with pytest.raises(InputError, match=r"min_rating=100\.0 keeps none of the 4 ratings"):
        ingest.run(cfg)
    assert read_table(cfg.inputs.interactions).equals(before)

"""publish: invariants of the table, the folder Lookup reads, CURRENT moving only at the swap."""

import datetime as dt

import pyarrow as pa
import pytest

from common import storage
from common.lookup import Lookup, padded_rows
from common.publish import (
    TableError,
    build_backoff,
    build_top_items,
    new_version,
    publish_version,
    validate_table,
    write_version,
)
from tests.unit.infer.helpers_infer import CATALOG, table, transitions

GOOD = [(0, 1, 1, 2, 0.6, "llm"), (0, 1, 2, 3, 0.3, "backoff"), (2, 3, 1, 0, 1.0, "frequency")]


def test_padded_rows_skip_c1_c2_repeats_and_unknowns_and_never_raise_a_score():
    answers = ([(7, 0.5), (2, 0.25), (99, 0.2)], "llm")  # 99: not in the catalog
    by_c2 = ([(2, 0.6), (0, 0.1), (3, 0.05)], "backoff")  # 2 again; 0 is c1
    overall = ([(4, 0.3), (5, 0.01), (6, 0.005)], "backoff")
    row = padded_rows([answers, by_c2, overall], (0, 1), 4, set(range(8)))
    # 4's own score 0.3 is capped by 3's 0.05 above it; the row stops at k = 4.
    assert row == [(7, 0.5, "llm"), (2, 0.25, "llm"), (3, 0.05, "backoff"), (4, 0.05, "backoff")]
    assert padded_rows([answers], (7, 2), 3, set(range(8))) == []


def _parts(rows=GOOD):
    glob = pa.table(
        {
            "c2": pa.array([1, 1], pa.int32()),
            "rank": pa.array([1, 2], pa.int16()),
            "c3": pa.array([3, 2], pa.int32()),
            "score": pa.array([5.0, 4.0], pa.float32()),
        }
    )
    back = build_backoff(
        glob, transitions([(0, 1, 2, 7), (1, 2, 3, 2), (2, 3, 0, 2)]), CATALOG, k=2
    )
    return {
        "table": table(rows),
        "backoff": back,
        "catalog": CATALOG,
        "manifest": {"strategy": "rag"},
    }


@pytest.mark.parametrize(
    "rows, problem",
    [
        ([(0, 1, 1, 9, 0.5, "llm")], "not clusters"),
        ([(0, 1, 1, 1, 0.5, "llm")], "equal to c1 or c2"),
        ([(0, 1, 1, 2, 0.5, "llm"), (0, 1, 2, 2, 0.4, "llm")], "repeats"),
        ([(0, 1, 2, 2, 0.5, "llm")], "ranks"),
        ([(0, 1, 1, 2, 0.5, "magic")], "unknown sources"),
        ([(1, 1, 1, 2, 0.5, "llm")], "c1 == c2"),
    ],
)
def test_validate_table_rejects(rows, problem):
    with pytest.raises(TableError, match=problem):
        validate_table(table(rows), CATALOG)


def test_backoff_global_top_by_count_then_id():
    back = _parts()["backoff"]
    glob = back.filter(pa.compute.equal(back["c2"], -1))
    # c3 counts: 2 -> 7, 3 -> 2, 0 -> 2, 1 -> 0; ties by id: 0 before 3.
    assert glob["c3"].to_pylist() == [2, 0, 3, 1]
    assert glob["rank"].to_pylist() == [1, 2, 3, 4]
    assert abs(glob["score"][0].as_py() - 7 / 11) < 1e-6


def test_top_items_rank_per_cluster():
    counts = pa.table(
        {
            "day": [dt.date(2026, 3, 1)] * 4 + [dt.date(2026, 3, 2)],
            "cluster_id": pa.array([0, 0, 0, 1, 0], pa.int32()),
            "item_id": ["a", "b", "c", "z", "b"],
            "count": pa.array([5, 3, 1, 2, 4], pa.int64()),
        }
    )
    top = build_top_items(counts, n=2)
    assert top.to_pylist() == [
        {"cluster_id": 0, "rank": 1, "item_id": "b", "count": 7},
        {"cluster_id": 0, "rank": 2, "item_id": "a", "count": 5},
        {"cluster_id": 1, "rank": 1, "item_id": "z", "count": 2},
    ]


def test_versions_sort_by_day_then_time_and_are_unique():
    t = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.UTC)
    a = new_version(dt.date(2026, 3, 1), "rag", t)
    b = new_version(dt.date(2026, 3, 1), "rag", t + dt.timedelta(seconds=1))
    c = new_version(dt.date(2026, 3, 2), "frequency", t)
    assert sorted([c, b, a]) == [a, b, c]
    assert new_version(dt.date(2026, 3, 1), "rag", t) != a


def test_publish_then_lookup_reads_it(root):
    v = new_version(dt.date(2026, 3, 1), "rag")
    items = pa.table(
        {"item_id": pa.array([10, 11], pa.int64()), "cluster_id": pa.array([0, 1], pa.int32())}
    )
    publish_version(root, v, items=items, **_parts())
    assert storage.read_current(root) == v
    lk = Lookup.load(root, v)
    assert lk.answer(0, 1, 5) == ("llm", [(2, pytest.approx(0.6)), (3, pytest.approx(0.3))])
    assert lk.item_clusters == {"10": 0, "11": 1}
    manifest = storage.read_json(storage.join(storage.table_dir(root, v), "manifest.json"))
    assert manifest["version"] == v and manifest["strategy"] == "rag" and manifest["n_pairs"] == 2


def test_crash_between_write_and_swap_keeps_current(root, monkeypatch):
    old = new_version(dt.date(2026, 3, 1), "rag")
    publish_version(root, old, **_parts())

    def crash(*_):
        raise RuntimeError("killed before the swap")

    monkeypatch.setattr(storage, "swap_current", crash)
    new = new_version(dt.date(2026, 3, 2), "rag")
    with pytest.raises(RuntimeError, match="killed before the swap"):
        publish_version(root, new, **_parts())
    assert storage.exists(storage.join(storage.table_dir(root, new), "manifest.json"))
    assert storage.read_current(root) == old
    assert Lookup.load(root, storage.read_current(root)).version == old


def test_bad_table_writes_nothing(root):
    v = new_version(dt.date(2026, 3, 1), "rag")
    with pytest.raises(TableError):
        write_version(root, v, **_parts([(0, 1, 1, 1, 0.5, "llm")]))
    assert not storage.exists(storage.table_dir(root, v))
    assert storage.read_current(root) is None


@pytest.mark.parametrize(
    "actors, cpus, gpus, node, cores, threads",
    [
        (1, 1.0, 0.0, {"CPU": 2.0}, 2, 2),  # the laptop default: one actor, both cores
        (2, 1.0, 0.0, {"CPU": 2.0}, 2, 1),  # two actors share the node
        (8, 16.0, 0.0, {"CPU": 16.0}, 16, 16),  # 8 actors of 16 CPUs: one per 16-CPU node
        (8, 4.0, 0.0, {"CPU": 16.0}, 16, 4),  # four of them fit on a node
        (2, 1.0, 1.0, {"CPU": 8.0, "GPU": 1.0}, 8, 8),  # one GPU per node: one actor per node
        (3, 1.0, 0.0, {}, 6, 2),  # outside Ray: the pool shares this machine
    ],
)
def test_actor_threads_follow_the_actors_that_fit_on_its_node(
    actors, cpus, gpus, node, cores, threads
):
    from common.threads import threads_for

    assert threads_for(actors, cpus, gpus, node, cores) == threads

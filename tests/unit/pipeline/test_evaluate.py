"""jobs.evaluate scores a published table as Serve answers it; numbers worked out by hand."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pytest

from common import publish, schemas
from common.catalog import Catalog
from common.config import load_config
from common.storage import join, read_json, swap_current
from common.tables_io import write_parquet
from common.transitions import day_dir
from jobs import evaluate

CAT = Catalog(tuple(range(5)), tuple(f"c{i}" for i in range(5)), ("",) * 5)
D = dt.date(2026, 3, 1)


def table(rows):
    return pa.Table.from_pylist(
        [dict(c1=a, c2=b, rank=r, c3=c, score=1.0 / r, source="frequency") for a, b, r, c in rows],
        schema=schemas.TABLE,
    )


def backoff(rows):
    return pa.Table.from_pylist(
        [dict(c2=b, rank=r, c3=c, score=1.0) for b, r, c in rows], schema=publish.BACKOFF
    )


def write_day(root, day, rows):
    t = pa.Table.from_pylist(
        [dict(day=day, c1=a, c2=b, c3=c, count=n) for a, b, c, n in rows],
        schema=schemas.TRANSITIONS,
    )
    write_parquet(t, join(day_dir(root, day), "part-0.parquet"))


def test_evaluate_current_and_named_versions(root):
    # Version A: (0,1) -> [2, 3]; backoff of c2=1 -> [4]; global -> [0, 1, 2, 3, 4].
    glob = [(-1, i + 1, i) for i in range(5)]
    publish.write_version(
        root,
        "A",
        table([(0, 1, 1, 2), (0, 1, 2, 3)]),
        backoff([(1, 1, 4)] + glob),
        CAT,
        {
            "strategy": "frequency",
            "as_of": "2026-03-01",
            "guards": {"valid_rate": {"value": 0.95, "n": 20}},
            "compute_seconds": 12.5,
        },
    )
    publish.write_version(
        root,
        "B",
        table([(0, 1, 1, 3)]),
        backoff(glob),
        CAT,
        # Built as of Mar 2, so from Mar 1's counts; no build time of its own, only a nested
        # one that is some other cost.
        {"strategy": "base", "as_of": "2026-03-02", "metrics": {"perf": {"compute_seconds": 9}}},
    )
    swap_current(root, "A")
    # Day D: (0,1)->2 x3 (A rank 1), (0,1)->3 x1 (A rank 2), (2,1)->4 x2 (A: backoff c2 rank 1),
    # (3,4)->0 x4 (A: global, skipping nothing: 0 is rank 1). Day D+1: (0,1)->2 x10, not scored.
    write_day(root, D, [(0, 1, 2, 3), (0, 1, 3, 1), (2, 1, 4, 2), (3, 4, 0, 4)])
    write_day(root, D + dt.timedelta(days=1), [(0, 1, 2, 10)])
    cfg = load_config(
        None, [f"root={root}", "report=ev", "evaluate.start=2026-03-01", "evaluate.end=2026-03-02"]
    )
    out = evaluate.run(cfg)
    assert out["metrics"] == {
        "A": {
            "hit_rate@1": pytest.approx(0.9),
            "hit_rate@5": 1.0,
            "hit_rate@10": 1.0,
            "leaks_scored_days": False,
        }
    }
    m = read_json(join(root, "reports", "ev", "metrics.json"))["A"]
    assert m["n_events"] == 10
    assert m["hit_rate@1"] == pytest.approx((3 + 2 + 4) / 10)
    assert m["hit_rate@5"] == pytest.approx(1.0)
    assert m["coverage"] == pytest.approx(4 / 10)
    assert m["valid_rate"] == pytest.approx(0.95)
    assert m["strategy"] == "frequency" and m["compute_seconds"] == 12.5
    assert m["leaks_scored_days"] is False

    cfg = load_config(
        None,
        [
            f"root={root}",
            "report=ev2",
            "evaluate.versions=[A, B]",
            "evaluate.end=2026-03-03",
            "evaluate.days=2",
        ],
    )
    out = evaluate.run(cfg)
    assert (out["start"], out["end"]) == ("2026-03-01", "2026-03-03")
    m = read_json(join(root, "reports", "ev2", "metrics.json"))
    assert m["A"]["n_events"] == 20
    assert m["A"]["hit_rate@1"] == pytest.approx((3 + 2 + 4 + 10) / 20)
    # B: (0,1) -> [3]: 1 hit of 14 on that pair; (2,1) global [0,3,4] -> 4 at rank 3;
    # (3,4) -> 0 at rank 1.
    assert m["B"]["hit_rate@1"] == pytest.approx((1 + 4) / 20)
    assert m["B"]["hit_rate@5"] == pytest.approx((1 + 2 + 4) / 20)
    # B's manifest has no top-level compute_seconds: null, not 0.0 nor the nested 9.
    assert m["B"]["compute_seconds"] is None and m["A"]["compute_seconds"] == 12.5
    # B was built from a scored day (Mar 1): the flag, in metrics.json and the summary line.
    assert (m["A"]["leaks_scored_days"], m["B"]["leaks_scored_days"]) == (False, True)
    assert {v: r["leaks_scored_days"] for v, r in out["metrics"].items()} == {"A": False, "B": True}
    # Per day beside it, and the plot of them (docs/contracts.md: metrics.json plus plots).
    daily = read_json(join(root, "reports", "ev2", "timeline.json"))["hit_rates"]
    assert daily["A"]["2026-03-01"]["hit_rate@1"] == pytest.approx(9 / 10)
    assert daily["A"]["2026-03-02"]["hit_rate@1"] == pytest.approx(1.0)
    assert daily["B"]["2026-03-02"]["hit_rate@1"] == pytest.approx(0.0)  # 3 answered, 2 seen
    assert os.path.getsize(out["plots"][0]) > 1000
    assert out["plots"][0] == join(root, "reports", "ev2", "hit_rate_over_time.png")


def test_evaluate_without_published_table_is_a_clear_error(root):
    cfg = load_config(None, [f"root={root}"])
    with pytest.raises(ValueError, match="nothing published"):
        evaluate.run(cfg)


def publish_as_of(root, name, manifest):
    publish.write_version(
        root, name, table([(0, 1, 1, 2)]), backoff([(-1, 1, 3)]), CAT, manifest
    )


def test_an_adapter_fine_tuned_on_scored_days_is_flagged(root, tmp_path):
    """A table built for a day before the scored ones can still serve an adapter that learned
    from them: the flag follows the later of the two, from the manifest or the adapter."""
    write_day(root, D, [(0, 1, 2, 3)])
    late = str(tmp_path / "adapters" / "late")
    os.makedirs(late)
    with open(os.path.join(late, "meta.json"), "w") as f:
        f.write('{"as_of": "2026-03-02"}')
    publish_as_of(root, "own", {"as_of": "2026-03-01", "adapter_as_of": "2026-02-20"})
    publish_as_of(root, "recorded", {"as_of": "2026-03-01", "adapter_as_of": "2026-03-02"})
    # A manifest from before adapter_as_of was written: the adapter's meta.json says.
    publish_as_of(root, "older", {"as_of": "2026-03-01", "adapter": late})
    cfg = load_config(
        None,
        [
            f"root={root}",
            "evaluate.versions=[own, recorded, older]",
            "evaluate.start=2026-03-01",
            "evaluate.end=2026-03-02",
        ],
    )
    flags = {v: m["leaks_scored_days"] for v, m in evaluate.run(cfg)["metrics"].items()}
    assert flags == {"own": False, "recorded": True, "older": True}


def test_hit_rates_past_a_tables_top_k_are_refused(root):
    write_day(root, D, [(0, 1, 2, 3)])
    publish_as_of(root, "top5", {"as_of": "2026-03-01", "top_k": 5})
    publish_as_of(root, "top10", {"as_of": "2026-03-01", "top_k": 10})
    sets = [f"root={root}", "report=k", "evaluate.start=2026-03-01", "evaluate.end=2026-03-02"]
    with pytest.raises(ValueError, match="top5 holds its top 5 per pair: score at most k=5"):
        evaluate.run(load_config(None, [*sets, "evaluate.versions=[top5, top10]"]))
    assert not os.path.exists(join(root, "reports", "k"))  # refused before anything was written
    out = evaluate.run(load_config(None, [*sets, "evaluate.versions=[top5, top10]",
                                          "evaluate.ks=[1, 5]"]))
    assert out["metrics"]["top5"]["hit_rate@1"] == pytest.approx(1.0)

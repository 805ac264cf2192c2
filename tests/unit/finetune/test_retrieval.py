"""Retrieval snapshot (issue 3 item 1): rankings against a plain-Python reference, ties, trend
sign, storage round trip, and no leakage from day d or later."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict

import pyarrow as pa
import pytest

from common import schemas
from common.retrieval import build_snapshot, read_snapshot, write_snapshot

D = dt.date(2026, 3, 15)
W = 4  # window [Mar 11, Mar 15): first half Mar 11-12, last half Mar 13-14


def day(i: int) -> dt.date:
    return D + dt.timedelta(days=i)


def counts(rows) -> pa.Table:
    """rows: (day, c1, c2, c3, count)."""
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 5
    return pa.table(
        {
            n: pa.array(list(v), schemas.TRANSITIONS.field(n).type)
            for n, v in zip(schemas.TRANSITIONS.names, cols, strict=True)
        },
        schema=schemas.TRANSITIONS,
    )


def reference(rows, d, w, top_n):
    """The definition, in plain Python."""
    start, half = d - dt.timedelta(days=w), w // 2
    first_end, second_start = start + dt.timedelta(days=half), d - dt.timedelta(days=half)
    tot, first, second, glob = (defaultdict(int) for _ in range(4))
    for dd, a, b, c, n in rows:
        if not (start <= dd < d):
            continue
        tot[(a, b, c)] += n
        glob[(b, c)] += n
        if dd < first_end:
            first[(a, b, c)] += n
        if dd >= second_start:
            second[(a, b, c)] += n

    def top(scores, support, pooled=False):
        """Ties go to c2's count over every c1 (pair rankings only), then to c3 ascending."""
        by_key = defaultdict(list)
        for key, s in scores.items():
            by_key[key[:-1]].append((s, key[-1]))
        out = {}
        for k, lst in by_key.items():
            lst.sort(key=lambda x: (-x[0], -glob[(k[-1], x[1])] if pooled else 0, x[1]))
            out[k] = [(c, s / support[k]) for s, c in lst[:top_n]]
        return out

    pair_support, c2_support = defaultdict(int), defaultdict(int)
    for (a, b, _), n in tot.items():
        pair_support[(a, b)] += n
    for (b, _), n in glob.items():
        c2_support[(b,)] += n
    trend = {k: second[k] - first[k] for k in tot}
    return {
        "frequency": top(dict(tot), pair_support, pooled=True),
        "trend": top(trend, pair_support, pooled=True),
        "global": top(dict(glob), c2_support),
    }, pair_support


def as_lists(table: pa.Table, keys: list[str]):
    out = defaultdict(list)
    for r in table.sort_by([(k, "ascending") for k in keys] + [("rank", "ascending")]).to_pylist():
        out[tuple(r[k] for k in keys)].append((r["c3"], r["score"]))
    return dict(out)


def check(rows, top_n):
    snap = build_snapshot(counts(rows), D, W, top_n)
    want, support = reference(rows, D, W, top_n)
    for variant, keys in (("frequency", ["c1", "c2"]), ("trend", ["c1", "c2"]), ("global", ["c2"])):
        got = as_lists(snap[variant], keys)
        assert got.keys() == want[variant].keys(), variant
        for k in got:
            assert [c for c, _ in got[k]] == [c for c, _ in want[variant][k]], (variant, k)
            assert [s for _, s in got[k]] == pytest.approx([s for _, s in want[variant][k]])
        ranks = snap[variant]["rank"].to_pylist()
        assert min(ranks, default=1) >= 1 and max(ranks, default=1) <= top_n
    for r in snap["frequency"].to_pylist():
        assert r["support"] == support[(r["c1"], r["c2"])]
    return snap


def test_hand_made_ranking_ties_and_trend_sign():
    rows = [
        # pair (1, 2): c3=5 3x early, c3=6 1x early + 2x late, c3=7 3x late, c3=4 3x (split).
        (day(-4), 1, 2, 5, 3),
        (day(-3), 1, 2, 6, 1),
        (day(-1), 1, 2, 6, 2),
        (day(-2), 1, 2, 7, 3),
        (day(-4), 1, 2, 4, 1),
        (day(-1), 1, 2, 4, 2),
        # pairs (3, 2) and (0, 2): share c2 with (1, 2) for the global ranking and its ties.
        (day(-2), 3, 2, 5, 4),
        (day(-2), 0, 2, 6, 1),
        # outside the window: before it and on/after d.
        (day(-5), 1, 2, 9, 100),
        (day(0), 1, 2, 8, 100),
        (day(3), 3, 2, 8, 100),
    ]
    snap = check(rows, top_n=3)
    freq = as_lists(snap["frequency"], ["c1", "c2"])
    # Counts 3, 3, 3, 3 (c3 = 4, 5, 6, 7): the tie goes to c2's count over every c1 (5: 7,
    # 6: 4, 4 and 7: 3), then to c3 ascending; top 3.
    assert [c for c, _ in freq[(1, 2)]] == [5, 6, 4]
    assert freq[(1, 2)][0][1] == pytest.approx(3 / 12)
    assert [c for c, _ in freq[(0, 2)]] == [6]
    trend = as_lists(snap["trend"], ["c1", "c2"])
    # Trends: 7: +3, 6: +1, 4: +1, 5: -3 -> 7, then 6 before 4 (c2's count 4 against 3).
    assert [c for c, _ in trend[(1, 2)]] == [7, 6, 4]
    assert trend[(1, 2)][0][1] == pytest.approx(3 / 12)
    full = build_snapshot(counts(rows), D, W, 10)
    assert as_lists(full["trend"], ["c1", "c2"])[(1, 2)][-1] == (5, pytest.approx(-3 / 12))
    glob = as_lists(snap["global"], ["c2"])
    assert [c for c, _ in glob[(2,)]] == [5, 6, 4]  # 5: 3 + 4 = 7 of 17, 6: 3 + 1
    assert glob[(2,)][0][1] == pytest.approx(7 / 17)
    assert 8 not in snap["frequency"]["c3"].to_pylist() + snap["global"]["c3"].to_pylist()


def test_random_tables_match_reference():
    rng = random.Random(7)
    for _ in range(20):
        rows = [
            (
                day(rng.randint(-6, 1)),
                rng.randint(0, 3),
                rng.randint(0, 3),
                rng.randint(0, 7),
                rng.randint(1, 3),
            )
            for _ in range(rng.randint(0, 120))
        ]
        check(rows, top_n=rng.randint(1, 4))


def test_odd_window_leaves_the_middle_day_out_of_the_trend():
    rows = [(day(-2), 1, 2, 3, 5), (day(-3), 1, 2, 4, 1)]  # W=5: halves of 2 days; day -3 is middle
    snap = build_snapshot(counts(rows), D, 5, 5)
    got = as_lists(snap["trend"], ["c1", "c2"])[(1, 2)]
    assert got == [(3, pytest.approx(5 / 6)), (4, pytest.approx(0.0))]


def test_empty_window():
    snap = build_snapshot(counts([(day(0), 1, 2, 3, 1)]), D, W, 5)
    assert all(t.num_rows == 0 for t in snap.values())
    assert set(snap["global"].column_names) == {"c2", "rank", "c3", "score", "count", "support"}


def test_no_leakage_from_day_d_or_later():
    """Events planted on day d and later (that would change every ranking) change nothing."""
    rng = random.Random(3)
    past = [
        (
            day(rng.randint(-W, -1)),
            rng.randint(0, 3),
            rng.randint(0, 3),
            rng.randint(0, 7),
            rng.randint(1, 3),
        )
        for _ in range(80)
    ]
    future = [(day(i), a, b, 7, 1000) for i in (0, 1, 5) for a in range(4) for b in range(4)]
    clean = build_snapshot(counts(past), D, W, 3)
    planted = build_snapshot(counts(past + future), D, W, 3)
    for v in clean:
        assert planted[v].equals(clean[v]), v


@pytest.mark.parametrize("where", ["local", "s3"])
def test_write_read_round_trip(where, tmp_path, request):
    root = (
        str(tmp_path / "root") if where == "local" else request.getfixturevalue("s3_bucket") + "/r"
    )
    rows = [(day(-1), 1, 2, 3, 2), (day(-2), 1, 2, 4, 1), (day(-3), 5, 2, 3, 1)]
    snap = build_snapshot(counts(rows), D, W, 5)
    write_snapshot(root, D, W, snap)
    write_snapshot(root, D, W, snap)  # overwriting is fine
    back = read_snapshot(root, D, W)
    for v in snap:
        assert back[v].equals(snap[v]), v
    with pytest.raises(FileNotFoundError, match="jobs.retrieve"):
        read_snapshot(root, D, W + 1)


def test_a_snapshot_of_an_older_ranking_is_not_read(tmp_path):
    """A snapshot stored before the tie rule (no ranking_version in meta.json) ranked ties by id:
    reading it says so, and jobs.infer then ranks the counts itself rather than serve it."""
    import json

    from common import retrieval
    from common.config import load_config
    from jobs.infer import snapshot_for

    root = str(tmp_path / "root")
    rows = [(day(-1), 1, 2, 3, 1), (day(-1), 1, 2, 4, 1), (day(-2), 5, 2, 4, 3)]
    write_counts(root, rows)
    folder = write_snapshot(root, D, W, build_snapshot(counts(rows), D, W, 5))
    meta_path = f"{folder}/meta.json"
    meta = json.loads(open(meta_path).read())
    assert meta["ranking_version"] == retrieval.RANKING_VERSION
    del meta["ranking_version"]
    open(meta_path, "w").write(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="ranking_version 1, this code ranks by 2"):
        read_snapshot(root, D, W)
    cfg = load_config(None, [f"root={root}", f"retrieval.window_days={W}"])
    snap, how = snapshot_for(cfg, D)
    assert how == "built"
    # Pair (1, 2): 3 and 4 tie at 1; c2's counts over every c1 put 4 (1 + 3) first.
    assert as_lists(snap["frequency"], ["c1", "c2"])[(1, 2)] == [
        (4, pytest.approx(0.5)),
        (3, pytest.approx(0.5)),
    ]


def write_counts(root: str, rows) -> None:
    """Store rows the way jobs.aggregate does: one folder per day."""
    from common.tables_io import write_parquet
    from common.transitions import day_dir

    by_day = defaultdict(list)
    for r in rows:
        by_day[r[0]].append(r)
    for d, part in by_day.items():
        write_parquet(counts(part), f"{day_dir(root, d)}/part-0.parquet")


def test_job_writes_the_snapshot_and_reads_no_later_day(tmp_path, capsys):
    """The job on a local root (arrow engine): snapshot equals build_snapshot of the window, and
    planted counts on d and later change nothing."""
    from jobs import retrieve

    rng = random.Random(5)
    past = [
        (
            day(rng.randint(-8, -1)),
            rng.randint(0, 3),
            rng.randint(0, 3),
            rng.randint(0, 7),
            rng.randint(1, 3),
        )
        for _ in range(60)
    ]
    future = [(day(i), a, 1, 7, 1000) for i in (0, 2) for a in range(4)]
    clean_root, planted_root = str(tmp_path / "clean"), str(tmp_path / "planted")
    write_counts(clean_root, past)
    write_counts(planted_root, past + future)
    for root in (clean_root, planted_root):
        out = retrieve.main(
            [
                "--set",
                f"root={root}",
                "--set",
                f"as_of={D}",
                "--set",
                f"retrieval.window_days={W}",
                "--set",
                "retrieval.top_n=3",
            ]
        )
        assert out["engine"] == "arrow" and out["days_read"] == W and out["day"] == str(D)
    want = build_snapshot(counts(past), D, W, 3)
    for root in (clean_root, planted_root):
        got = read_snapshot(root, D, W)
        for v in want:
            assert got[v].equals(want[v]), (root, v)
    assert '"pairs"' in capsys.readouterr().out  # one JSON summary line


def test_job_default_day_and_s3(s3_bucket):
    from common.config import load_config
    from jobs import retrieve

    root = s3_bucket + "/run"
    rows = [(day(-2), 1, 2, 3, 4), (day(-1), 1, 2, 5, 1)]
    write_counts(root, rows)
    cfg = load_config(None, [f"root={root}", "retrieval.window_days=2"])
    out = retrieve.run(cfg)
    assert out["day"] == str(D)  # last day with counts + 1
    snap = read_snapshot(root, D, 2)
    assert snap["frequency"].to_pylist()[0] == {
        "c1": 1,
        "c2": 2,
        "rank": 1,
        "c3": 3,
        "score": 0.8,
        "count": 4,
        "support": 5,
    }


def test_job_without_counts_is_a_clear_error(tmp_path):
    from jobs import retrieve

    with pytest.raises(SystemExit, match="run jobs.aggregate first"):
        retrieve.main(["--set", f"root={tmp_path}"])


def test_sort_order_packed_and_fallback_agree_with_lexsort():
    import numpy as np

    from common.retrieval import _sort_order

    rng = np.random.default_rng(0)
    for high in (50, 2**31 - 1):  # small ranges pack into one int64; huge ones fall back
        cols = [rng.integers(-high, high, 500) for _ in range(4)]
        want = np.lexsort(tuple(reversed(cols)))
        got = _sort_order(cols)
        assert [tuple(c[i] for c in cols) for i in got] == [tuple(c[i] for c in cols) for i in want]


def test_a_window_past_the_last_counted_day_says_so(tmp_path, caplog):
    """as_of three days after the last counts: those days are not aggregated yet (not days
    without events), so the snapshot is partial and the job says by how much."""
    from common.config import load_config
    from jobs import retrieve

    write_counts(str(tmp_path), [(day(-2), 1, 2, 3, 4), (day(-1), 1, 2, 5, 1)])
    cfg = load_config(None, [f"root={tmp_path}", "retrieval.window_days=4"])
    assert retrieve.run(cfg)["days_past_counts"] == 0 and "past the last" not in caplog.text
    late = load_config(None, [f"root={tmp_path}", "retrieval.window_days=4",
                              f"as_of={D + dt.timedelta(days=3)}"])
    with caplog.at_level("WARNING", logger="jobs.retrieve"):
        out = retrieve.run(late)
    assert out["days_past_counts"] == 3 and out["days_read"] == 1
    assert "runs 3 day(s) past the last counted day" in caplog.text

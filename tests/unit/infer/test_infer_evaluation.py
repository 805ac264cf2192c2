"""hit_rates: worked numbers on a 4-cluster table with both backoff levels."""

from common.evaluation import hit_rates
from common.lookup import Lookup
from tests.unit.infer.helpers_infer import CATALOG, backoff, table, transitions


def _lookup() -> Lookup:
    t = table([(0, 1, 1, 2, 0.6, "llm"), (0, 1, 2, 3, 0.3, "llm")])
    b = backoff(
        [
            (1, 1, 3, 5.0),
            (1, 2, 2, 4.0),
            (1, 3, 0, 1.0),
            (-1, 1, 2, 0.4),
            (-1, 2, 3, 0.3),
            (-1, 3, 0, 0.2),
            (-1, 4, 1, 0.1),
        ]
    )
    return Lookup.from_tables("v", t, b, CATALOG)


def test_hit_rates_worked_example():
    events = transitions(
        [
            (0, 1, 2, 3),  # in table, rank 1
            (0, 1, 3, 1),  # in table, rank 2
            (2, 1, 3, 2),  # backoff c2=1 -> [3, 0] (2 skipped): rank 1
            (3, 2, 0, 4),  # global -> [0, 1] (3, 2 skipped): rank 1
            (3, 2, 1, 5),  # global: rank 2
        ]
    )
    r = hit_rates(_lookup(), events, ks=(1, 2))
    assert r["n_events"] == 15
    assert abs(r["hit_rate@1"] - 9 / 15) < 1e-12
    assert r["hit_rate@2"] == 1.0
    assert abs(r["coverage"] - 4 / 15) < 1e-12


def test_hit_rates_sums_days_and_misses():
    # The same triple on two days counts twice; c3 = 0 is not among (0, 1)'s two answers.
    events = transitions([(0, 1, 2, 1), (0, 1, 0, 3)])
    import datetime as dt

    more = transitions([(0, 1, 2, 1)], day=dt.date(2026, 3, 2))
    import pyarrow as pa

    r = hit_rates(_lookup(), pa.concat_tables([events, more]), ks=(1, 5, 10))
    assert r["n_events"] == 5
    assert r["hit_rate@1"] == 2 / 5 and r["hit_rate@10"] == 2 / 5
    assert r["coverage"] == 1.0


def test_hit_rates_no_events():
    r = hit_rates(_lookup(), transitions([(0, 1, 2, 1)]).slice(0, 0))
    assert r == {
        "hit_rate@1": 0.0,
        "hit_rate@5": 0.0,
        "hit_rate@10": 0.0,
        "coverage": 0.0,
        "n_events": 0,
    }

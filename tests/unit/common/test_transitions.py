"""common.transitions.top_pairs: the held-out pairs the fine-tune scores and the guards check."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from common import schemas
from common.transitions import top_pairs

D = dt.date(2026, 3, 1)


def test_top_pairs_sum_over_days_and_successors_ties_by_pair():
    rows = [
        (D, 4, 5, 1, 3),  # (4, 5): 3 + 4 = 7, over two days and two successors
        (D + dt.timedelta(days=1), 4, 5, 2, 4),
        (D, 2, 3, 1, 7),  # (2, 3): 7, ties with (4, 5): the smaller pair first
        (D, 9, 1, 2, 8),  # (9, 1): 8, the most
        (D, 1, 9, 2, 2),
    ]
    events = pa.Table.from_pylist(
        [dict(day=d, c1=a, c2=b, c3=c, count=n) for d, a, b, c, n in rows],
        schema=schemas.TRANSITIONS,
    )
    assert top_pairs(events, 10) == [(9, 1), (2, 3), (4, 5), (1, 9)]
    assert top_pairs(events, 2) == [(9, 1), (2, 3)]
    assert top_pairs(schemas.TRANSITIONS.empty_table(), 5) == []

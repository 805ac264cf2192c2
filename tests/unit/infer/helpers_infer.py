"""Tiny hand-made tables shared by the infer unit tests."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from common import schemas
from common.catalog import Catalog
from common.publish import BACKOFF

CATALOG = Catalog((0, 1, 2, 3), ("art", "books", "cars", "dogs"), ("", "", "", ""))


def table(rows: list[tuple[int, int, int, int, float, str]]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            name: pa.array(col, schemas.TABLE.field(name).type)
            for name, col in zip(schemas.TABLE.names, cols, strict=True)
        },
        schema=schemas.TABLE,
    )


def backoff(rows: list[tuple[int, int, int, float]]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            name: pa.array(col, BACKOFF.field(name).type)
            for name, col in zip(BACKOFF.names, cols, strict=True)
        },
        schema=BACKOFF,
    )


def transitions(
    rows: list[tuple[int, int, int, int]], day: dt.date = dt.date(2026, 3, 1)
) -> pa.Table:
    c1, c2, c3, n = zip(*rows, strict=True)
    return pa.table(
        {
            "day": pa.array([day] * len(rows), pa.date32()),
            "c1": pa.array(c1, pa.int32()),
            "c2": pa.array(c2, pa.int32()),
            "c3": pa.array(c3, pa.int32()),
            "count": pa.array(n, pa.int64()),
        },
        schema=schemas.TRANSITIONS,
    )

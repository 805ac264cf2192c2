"""Arrow schemas of the stored data every part meets through (docs/contracts.md)."""

import pyarrow as pa

ITEMS = pa.schema([("item_id", pa.int64()), ("cluster_id", pa.int32())])

CLUSTERS = pa.schema(
    [("cluster_id", pa.int32()), ("name", pa.string()), ("description", pa.string())]
)

# Daily novel-transition counts: the one statistic everything else is computed from.
TRANSITIONS = pa.schema(
    [
        ("day", pa.date32()),
        ("c1", pa.int32()),
        ("c2", pa.int32()),
        ("c3", pa.int32()),
        ("count", pa.int64()),
    ]
)

# The published lookup table: top-k answers per (c1, c2).
TABLE = pa.schema(
    [
        ("c1", pa.int32()),
        ("c2", pa.int32()),
        ("rank", pa.int16()),
        ("c3", pa.int32()),
        ("score", pa.float32()),
        ("source", pa.string()),
    ]
)

TABLE_SOURCES = ("llm", "frequency", "backoff")

INTERACTION_COLUMNS = ("user_id", "item_id", "ts")

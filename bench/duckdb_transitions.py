"""The docs/contracts.md transition counts as one DuckDB query: the yardstick for jobs.aggregate.

Files are read in path order and `file_row_number` keeps rows in file order, so ties in `ts`
break by input order exactly as the contract says. Events whose item is unknown, or whose ids or
ts are null, are dropped by the inner join and the WHERE clause.
"""

from __future__ import annotations

import pyarrow as pa

QUERY = """
WITH raw AS (
  SELECT user_id, item_id, ts, filename, file_row_number
  FROM read_parquet('{glob}', filename = true, file_row_number = true, hive_partitioning = false)
), files AS (
  SELECT filename, row_number() OVER (ORDER BY filename) AS file_index
  FROM (SELECT DISTINCT filename FROM raw)
), ev AS (
  SELECT r.user_id, r.ts, f.file_index, r.file_row_number AS row_in_file, it.cluster_id AS c
  FROM raw r JOIN files f USING (filename) JOIN read_parquet('{items}') it USING (item_id)
  WHERE r.user_id IS NOT NULL AND r.ts IS NOT NULL
), seq AS (
  SELECT user_id, ts, file_index, row_in_file, c,
         lag(c) OVER (PARTITION BY user_id ORDER BY ts, file_index, row_in_file) AS prev
  FROM ev
), collapsed AS (
  SELECT * FROM seq WHERE prev IS NULL OR prev <> c
), triples AS (
  SELECT ts, c AS c3,
         lag(c, 1) OVER w AS c2,
         lag(c, 2) OVER w AS c1
  FROM collapsed
  WINDOW w AS (PARTITION BY user_id ORDER BY ts, file_index, row_in_file)
)
SELECT CAST(timezone('UTC', ts) AS DATE) AS day, CAST(c1 AS INTEGER) AS c1,
       CAST(c2 AS INTEGER) AS c2, CAST(c3 AS INTEGER) AS c3, count(*) AS count
FROM triples
WHERE c1 IS NOT NULL AND c3 <> c1
GROUP BY ALL
ORDER BY day, c1, c2, c3
"""


def duckdb_transitions(
    interactions_dir: str, items_path: str, threads: int | None = None
) -> pa.Table:
    """Daily novel-transition counts of a simulated log (Parquet partitions with timestamp ts)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {threads}")
    glob = interactions_dir.rstrip("/") + "/**/*.parquet"
    return con.sql(QUERY.format(glob=glob, items=items_path)).to_arrow_table()

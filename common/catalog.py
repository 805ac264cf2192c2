"""The cluster catalog: ids, names and descriptions of the interest clusters.

docs/contracts.md "Inputs"."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from common import schemas
from common.cli import InputError
from common.tables_io import read_table


@dataclass(frozen=True)
class Catalog:
    """Clusters in id order; immutable so Serve replicas and actors can share one safely."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    descriptions: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.ids)})

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, cluster_id: int) -> bool:
        return cluster_id in self._index

    def name(self, cluster_id: int) -> str:
        return self.names[self._index[cluster_id]]

    def description(self, cluster_id: int) -> str:
        return self.descriptions[self._index[cluster_id]]

    def position(self, cluster_id: int) -> int:
        return self._index[cluster_id]

    @classmethod
    def from_table(cls, table: pa.Table) -> Catalog:
        missing = [c for c in ("cluster_id", "name") if c not in table.column_names]
        if missing:
            raise InputError(f"clusters input is missing column(s): {', '.join(missing)}")
        if "description" not in table.column_names:
            table = table.append_column("description", pa.array([""] * len(table), pa.string()))
        table = table.select(["cluster_id", "name", "description"]).cast(schemas.CLUSTERS)
        if table["cluster_id"].null_count or table["name"].null_count:
            raise InputError("clusters input has null cluster_id or name")
        from common.prompts import clean  # prompts imports this module

        # Prompts and answers spell names on one line, trimmed (`clean`): two names that differ
        # only in whitespace would be one answer.
        if len({clean(n) for n in table["name"].to_pylist()}) != len(table):
            raise InputError(
                "clusters input has duplicate names (compared on one line, trimmed); names "
                "must be unique"
            )
        if len(pc.unique(table["cluster_id"])) != len(table):
            raise InputError("clusters input has duplicate cluster_id values")
        table = table.sort_by("cluster_id")
        descriptions = [d or "" for d in table["description"].to_pylist()]
        return cls(
            tuple(table["cluster_id"].to_pylist()),
            tuple(table["name"].to_pylist()),
            tuple(descriptions),
        )


def load_catalog(uri: str) -> Catalog:
    """Read the clusters input (Parquet or CSV, local or s3://)."""
    return Catalog.from_table(read_table(uri))

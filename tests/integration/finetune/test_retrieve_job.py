"""jobs.retrieve with the Ray Data engine gives exactly the pyarrow engine's snapshot."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pytest

from common import schemas, storage
from common.config import load_config
from common.retrieval import read_snapshot
from common.tables_io import write_parquet
from common.transitions import day_dir

pytestmark = pytest.mark.ray
D = dt.date(2026, 3, 15)


def test_ray_engine_equals_arrow_engine(ray_session, tmp_path, monkeypatch):
    """Both engines rank the same snapshot. A call-through spy on the Ray Data path shows the
    ray run really read through Ray (the summary's "engine" only repeats the config), so this
    never compares the pyarrow engine with itself."""
    from jobs import retrieve

    ray_calls: list[int] = []
    real = retrieve.counts_with_ray

    def spy(cfg, paths, fs, day):
        counts = real(cfg, paths, fs, day)
        ray_calls.append(counts.num_rows)
        return counts

    monkeypatch.setattr(retrieve, "counts_with_ray", spy)

    rng = random.Random(11)
    root = str(tmp_path / "root")
    for i in range(-10, 3):  # days d-10 .. d+2, one file each (two for odd days)
        for part in range(1 + (i % 2)):
            rows = {
                "day": [D + dt.timedelta(days=i)] * 25,
                "c1": [rng.randint(0, 4) for _ in range(25)],
                "c2": [rng.randint(0, 4) for _ in range(25)],
                "c3": [rng.randint(0, 9) for _ in range(25)],
                "count": [rng.randint(1, 5) for _ in range(25)],
            }
            write_parquet(
                pa.table(rows).cast(schemas.TRANSITIONS),
                f"{day_dir(root, rows['day'][0])}/part-{part}.parquet",
            )
    snaps = {}
    for engine in ("arrow", "ray"):
        cfg = load_config(
            None,
            [f"root={root}", f"as_of={D}", "retrieval.window_days=6", f"retrieval.engine={engine}"],
        )
        out = retrieve.run(cfg)
        assert out["engine"] == engine and out["days_read"] == 6
        assert len(ray_calls) == (engine == "ray")  # only the ray run went through Ray Data
        snaps[engine] = read_snapshot(root, D, 6)
        # This run's snapshot, not the other engine's left in place.
        meta = storage.read_json(storage.join(storage.retrieval_dir(root, D, 6), "meta.json"))
        assert meta["engine"] == engine
    assert snaps["arrow"]["frequency"].num_rows > 0 and ray_calls[0] > 0
    for v in snaps["arrow"]:
        assert snaps["ray"][v].equals(snaps["arrow"][v]), v

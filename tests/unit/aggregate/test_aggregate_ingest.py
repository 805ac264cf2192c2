"""jobs.ingest: genre combinations named in words, rare ones folded, positives kept."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq

from common.config import load_config
from jobs import ingest


def test_names_and_folding_by_hand():
    movies = pd.DataFrame({
        "item_id": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "title": list("abcdefghij"),
        # Action|Sci-Fi twice: kept at min 2. Drama is on 4 movies, Sci-Fi and Action on 3, so
        # Drama|Sci-Fi and Drama|Action|Adventure fold into Drama; Comedy and Horror tie at 2,
        # so Comedy|Horror folds into the alphabetically first; no genre stays its own cluster.
        "genres": ["Sci-Fi|Action", "Action|Sci-Fi", "Drama|Sci-Fi", "Drama",
                   "Drama|Action|Adventure", "(no genres listed)", "Drama|Romance",
                   "Comedy|Horror", "Comedy", "Horror"],
    })
    items, clusters = ingest.assign_clusters(movies, 2, pd.Series(dtype=float))
    names = dict(zip(clusters["cluster_id"].to_pylist(), clusters["name"].to_pylist(), strict=True))
    got = {i: names[c] for i, c in zip(items["item_id"].to_pylist(),
                                       items["cluster_id"].to_pylist(), strict=True)}
    assert got == {1: "Action & Sci-Fi", 2: "Action & Sci-Fi", 3: "Drama", 4: "Drama",
                   5: "Drama", 6: "No genre listed", 7: "Drama", 8: "Comedy", 9: "Comedy",
                   10: "Horror"}
    assert ingest.cluster_name(("Action", "Adventure", "Sci-Fi")) == "Action, Adventure & Sci-Fi"


def test_movielens_and_movietweetings_examples(tmp_path):
    ml = load_config(None, [f"root={tmp_path}/ml"])
    s = ingest.run(ml)
    assert (s["ratings"], s["interactions"], s["users"]) == (100836, 100836, 610)
    clusters = pq.read_table(ml.inputs.clusters)
    assert clusters.num_rows >= 40 and len(set(clusters["name"].to_pylist())) == clusters.num_rows
    assert "Action, Adventure & Sci-Fi" in clusters["name"].to_pylist()
    mt = load_config(None, [f"root={tmp_path}/mt", "ingest.dataset=movietweetings",
                            "ingest.min_rating=7"])
    s = ingest.run(mt)
    log = pq.read_table(f"{tmp_path}/mt/inputs/interactions/part-0.parquet")
    assert s["ratings"] == 100000 and log.num_rows == s["interactions"] < 100000
    assert min(log["rating"].to_pylist()) >= 7
    items = pq.read_table(mt.inputs.items)
    assert set(log["item_id"].to_pylist()) <= set(items["item_id"].to_pylist())

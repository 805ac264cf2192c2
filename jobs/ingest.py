"""Convert MovieLens or MovieTweetings into the input contract (SYSTEM.md "Inputs").

Genre combinations become the interest clusters, named in words ("Action, Adventure & Sci-Fi"),
as the data README suggests: a combination with fewer than `ingest.min_cluster_items` movies folds
into its most common genre (the one with the most movies overall), so every cluster is big enough
to learn from. Ratings keep their file order, which is the order ties in `ts` break by (both
datasets tie often: bulk rating sessions); `ingest.min_rating` keeps only positive engagements,
as the paper does.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa

from common import schemas
from common.cli import InputError, job_parser, keys_help, run_main
from common.config import Config
from common.storage import fsspec_for, join, remove
from common.tables_io import write_parquet

log = logging.getLogger(__name__)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
DEFAULT_SOURCE = {"movielens": "ml-latest-small", "movietweetings": "movietweetings-100k"}
NO_GENRE = "(no genres listed)"


def _open(uri: str) -> io.BytesIO:
    fs, path = fsspec_for(uri)
    if not fs.exists(path):
        raise InputError(f"ingest source file not found: {uri}")
    with fs.open(path, "rb") as f:
        return io.BytesIO(f.read())


def read_source(dataset: str, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings: user_id, item_id, rating, ts; movies: item_id, title, genres) in file order."""
    if dataset == "movielens":
        ratings = pd.read_csv(_open(join(source, "ratings.csv")))
        movies = pd.read_csv(_open(join(source, "movies.csv")))
        ratings.columns = ["user_id", "item_id", "rating", "ts"]
        movies.columns = ["item_id", "title", "genres"]
    else:
        ratings = pd.read_csv(_open(join(source, "ratings.dat")), sep="::", engine="python",
                              header=None, names=["user_id", "item_id", "rating", "ts"])
        movies = pd.read_csv(_open(join(source, "movies.dat")), sep="::", engine="python",
                             header=None, names=["item_id", "title", "genres"],
                             encoding="utf-8", keep_default_na=False)
    movies["genres"] = movies["genres"].fillna("").astype(str)
    return ratings, movies


def genre_key(genres: str) -> tuple[str, ...]:
    """'Sci-Fi|Action' -> ('Action', 'Sci-Fi'): order-free, empty for no genre."""
    parts = {g.strip() for g in genres.split("|") if g.strip() and g.strip() != NO_GENRE}
    return tuple(sorted(parts))


def cluster_name(key: tuple[str, ...]) -> str:
    """('Action', 'Adventure', 'Sci-Fi') -> 'Action, Adventure & Sci-Fi'."""
    if not key:
        return "No genre listed"
    return key[0] if len(key) == 1 else ", ".join(key[:-1]) + " & " + key[-1]


def assign_clusters(movies: pd.DataFrame, min_items: int, popularity: pd.Series):
    """(items table, clusters table): combinations with >= min_items movies, others folded."""
    keys = movies["genres"].map(genre_key)
    combo_size = Counter(keys)
    genre_size = Counter(g for k in keys for g in k)

    def final(key: tuple[str, ...]) -> tuple[str, ...]:
        if combo_size[key] >= min_items or len(key) <= 1:
            return key
        return (min(key, key=lambda g: (-genre_size[g], g)),)  # ties: alphabetically first

    finals = keys.map(final)
    names = sorted(set(finals), key=lambda k: (len(k), k))
    ids = {k: i for i, k in enumerate(names)}
    items = pa.table({"item_id": pa.array(movies["item_id"].to_numpy(), pa.int64()),
                      "cluster_id": pa.array(finals.map(ids).to_numpy(), pa.int32())},
                     schema=schemas.ITEMS)
    frame = movies.assign(cluster=finals.map(ids), pop=movies["item_id"].map(popularity).fillna(0))
    descriptions = []
    for key in names:
        group = frame[frame["cluster"] == ids[key]].sort_values("pop", ascending=False,
                                                                kind="stable")
        examples = "; ".join(group["title"].head(3))
        kind = "with no genre listed" if not key else f"tagged {cluster_name(key)}"
        descriptions.append(f"{len(group)} movies {kind}, e.g. {examples}.")
    clusters = pa.table({"cluster_id": pa.array(range(len(names)), pa.int32()),
                         "name": [cluster_name(k) for k in names], "description": descriptions},
                        schema=schemas.CLUSTERS)
    return items, clusters


def run(cfg: Config) -> dict:
    started = time.time()
    ic = cfg.ingest
    source = ic.source or str(EXAMPLES / DEFAULT_SOURCE[ic.dataset])
    if ic.source is None and not Path(source).is_dir():
        # `ray job submit --working-dir .` leaves examples/data/ behind (.rayignore).
        raise InputError(f"the bundled {ic.dataset} copy is not at {source}; pass "
                         "--set ingest.source=FOLDER (a local path or s3://...)")
    ratings, movies = read_source(ic.dataset, source)
    n_ratings = len(ratings)
    if ic.min_rating is not None:
        ratings = ratings[ratings["rating"] >= ic.min_rating]
    items, clusters = assign_clusters(movies, ic.min_cluster_items,
                                      ratings["item_id"].value_counts())
    interactions = pa.table({
        "user_id": pa.array(ratings["user_id"].to_numpy(), pa.int64()),
        "item_id": pa.array(ratings["item_id"].to_numpy(), pa.int64()),
        "ts": pa.array(ratings["ts"].to_numpy(), pa.int64()),  # epoch seconds, UTC
        "rating": pa.array(ratings["rating"].to_numpy(), pa.float32()),
    })
    remove(cfg.inputs.interactions)
    out = cfg.inputs.interactions
    if not out.endswith((".parquet", ".csv")):
        out = join(out, "part-0.parquet")
    write_parquet(interactions, out)
    write_parquet(items, cfg.inputs.items)
    write_parquet(clusters, cfg.inputs.clusters)
    return {"dataset": ic.dataset, "source": source, "ratings": n_ratings,
            "interactions": interactions.num_rows, "users": int(ratings["user_id"].nunique()),
            "items": items.num_rows, "clusters": clusters.num_rows,
            "written": cfg.inputs.interactions, "seconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(
        "python -m jobs.ingest",
        "Convert MovieLens (ratings.csv + movies.csv) or MovieTweetings (ratings.dat + "
        "movies.dat) into interactions, items and genre-combination clusters.",
        reads="ingest.source (default: examples/data/ml-latest-small or movietweetings-100k)",
        writes="inputs.interactions (part-0.parquet), inputs.items, inputs.clusters",
    )
    parser.epilog += "\n\nKeys (--set KEY=VALUE), defaults:\n" + keys_help("", "inputs", "ingest")
    return run_main(parser, run, argv)


if __name__ == "__main__":
    main()

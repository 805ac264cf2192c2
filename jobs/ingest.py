"""Convert MovieLens or MovieTweetings into the input contract (docs/contracts.md "Inputs").

Genre combinations become the interest clusters, named in words ("Action, Adventure & Sci-Fi"),
as the data README suggests: a combination with fewer than `ingest.min_cluster_items` movies folds
into its most common genre (the one with the most movies overall), so every cluster is big enough
to learn from. Ratings keep their file order, which is the order ties in `ts` break by (both
datasets tie often: bulk rating sessions); `ingest.min_rating` keeps only positive engagements,
as the paper does.

Rows the contract could not hold are dropped here and counted in the summary (`dropped`): a
rating with a missing or non-numeric field (a truncated line, an empty user id), a movie without
a numeric id, and every repeat of a movie id after its first row (an item in two clusters is an
input error downstream). The interactions are written as Parquet, or as CSV for a `.csv` or
`.csv.gz` target; an existing target (log, items or clusters) is replaced only when this
project's jobs wrote it (common/input_targets.py).
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from common import schemas
from common.cli import InputError, job_parser, keys_help, run_main
from common.config import Config
from common.input_targets import (
    REPLACE_NOTE,
    claim_inputs,
    mark_written,
    source_of,
    table_digest,
    write_input_file,
)
from common.storage import fsspec_for, join
from common.tables_io import write_csv, write_parquet

log = logging.getLogger(__name__)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
DEFAULT_SOURCE = {"movielens": "ml-latest-small", "movietweetings": "movietweetings-100k"}
NO_GENRE = "(no genres listed)"
RATING_COLUMNS = ["user_id", "item_id", "rating", "ts"]
CSV_SUFFIXES = (".csv", ".csv.gz")


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
        ratings.columns = RATING_COLUMNS
        movies.columns = ["item_id", "title", "genres"]
    else:
        ratings = pd.read_csv(_open(join(source, "ratings.dat")), sep="::", engine="python",
                              header=None, names=RATING_COLUMNS)
        movies = pd.read_csv(_open(join(source, "movies.dat")), sep="::", engine="python",
                             header=None, names=["item_id", "title", "genres"],
                             encoding="utf-8", keep_default_na=False)
    movies["genres"] = movies["genres"].fillna("").astype(str)
    movies["title"] = movies["title"].fillna("").astype(str)
    return ratings, movies


def _finite(frame: pd.DataFrame) -> pd.Series:
    """Rows whose every value is a finite number (to_numeric leaves NaN where one is missing)."""
    return pd.Series(np.isfinite(frame.to_numpy(dtype=np.float64)).all(axis=1), index=frame.index)


def _whole(frame: pd.DataFrame) -> pd.Series:
    """Rows whose every value is a finite whole number: what an int64 id column can hold."""
    whole = (frame.to_numpy(dtype=np.float64) % 1 == 0).all(axis=1)
    return _finite(frame) & pd.Series(whole, index=frame.index)


def clean_ratings(ratings: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(ratings with a number in every field, ids and ts as int64, file order kept; rows dropped).

    A truncated line (`1,50,4.0`) or an empty field reads as NaN, which an int64 column cannot
    hold; the contract drops rows with nulls, so they go here, where the count can be reported.
    """
    num = ratings[RATING_COLUMNS].apply(pd.to_numeric, errors="coerce")
    ok = _whole(num[["user_id", "item_id"]]) & _finite(num[["rating", "ts"]])
    kept = num[ok].assign(ts=np.floor(num["ts"][ok]))  # epoch seconds, whole in both datasets
    kept = kept.astype({"user_id": "int64", "item_id": "int64", "ts": "int64",
                        "rating": "float64"})
    return kept.reset_index(drop=True), int((~ok).sum())


def clean_movies(movies: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """(movies with an integer id, one row per id: the first; rows without an id; repeats).

    Two rows of one id with different genres would put the item in two clusters, which the
    aggregate rejects as an input error; the first row is the one kept.
    """
    ids = pd.to_numeric(movies["item_id"], errors="coerce").to_frame()
    ok = _whole(ids)
    movies = movies[ok].assign(item_id=ids["item_id"][ok].astype("int64"))
    repeat = movies["item_id"].duplicated(keep="first")
    return movies[~repeat].reset_index(drop=True), int((~ok).sum()), int(repeat.sum())


def write_interactions(table: pa.Table, uri: str, job: str, source: str | None = None) -> str:
    """Write the log at uri: a `.parquet` or CSV (`.csv`, `.csv.gz`) file, else a folder holding
    part-0.parquet; returns the file written. Readers pick the format by the file name, so a
    `.csv` file must hold CSV. The target was cleared by claim_inputs. `source`: the
    fingerprint of what it was made from (input_targets.source_of)."""
    if not uri.endswith((".parquet", *CSV_SUFFIXES)):
        mark_written(uri, job, folder=True, source=source)
        out = join(uri, "part-0.parquet")
        write_parquet(table, out)
        return out
    write = write_parquet if uri.endswith(".parquet") else write_csv
    write_input_file(table, uri, job, source, write)
    return uri


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
    ratings, bad_ratings = clean_ratings(ratings)
    movies, bad_movies, repeated_movies = clean_movies(movies)
    dropped = {"ratings_missing_field": bad_ratings, "movies_missing_id": bad_movies,
               "movies_repeated_id": repeated_movies}
    if any(dropped.values()):
        log.warning("ingest dropped rows from %s: %s", source, dropped)
    if ic.min_rating is not None:
        kept = ratings[ratings["rating"] >= ic.min_rating]
        if kept.empty and not ratings.empty:  # checked before anything is replaced
            raise InputError(
                f"ingest.min_rating={ic.min_rating} keeps none of the {len(ratings)} ratings "
                f"of {source} (they range {ratings['rating'].min()}..{ratings['rating'].max()})"
            )
        ratings = kept
    items, clusters = assign_clusters(movies, ic.min_cluster_items,
                                      ratings["item_id"].value_counts())
    interactions = pa.table({
        "user_id": pa.array(ratings["user_id"].to_numpy(), pa.int64()),
        "item_id": pa.array(ratings["item_id"].to_numpy(), pa.int64()),
        "ts": pa.array(ratings["ts"].to_numpy(), pa.int64()),  # epoch seconds, UTC
        "rating": pa.array(ratings["rating"].to_numpy(), pa.float32()),
    })
    job = "jobs.ingest"
    claim_inputs(cfg, job)
    made_from = {"log": table_digest(interactions), "items": table_digest(items)}
    write_interactions(interactions, cfg.inputs.interactions, job, source_of(made_from))
    write_input_file(items, cfg.inputs.items, job)
    write_input_file(clusters, cfg.inputs.clusters, job)
    return {"dataset": ic.dataset, "source": source, "ratings": n_ratings, "dropped": dropped,
            "interactions": interactions.num_rows, "users": int(ratings["user_id"].nunique()),
            "items": items.num_rows, "clusters": clusters.num_rows,
            "written": cfg.inputs.interactions, "seconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(
        "python -m jobs.ingest",
        "Convert MovieLens (ratings.csv + movies.csv) or MovieTweetings (ratings.dat + "
        "movies.dat) into interactions, items and genre-combination clusters.",
        reads="ingest.source (default: examples/data/ml-latest-small or movietweetings-100k)",
        writes="inputs.interactions (a folder holding part-0.parquet; or one file: Parquet for "
        ".parquet, CSV for .csv or .csv.gz), inputs.items, inputs.clusters. " + REPLACE_NOTE + ". "
        "Ratings with a missing or non-numeric field, movies without an id and repeats of a "
        "movie id (the first row is kept) are dropped and counted in the summary",
    )
    keys = keys_help("root", "inputs", "ingest")  # report and as_of mean nothing here
    parser.epilog += "\n\nKeys (--set KEY=VALUE), defaults:\n" + keys
    return run_main(parser, run, argv)


if __name__ == "__main__":
    main()

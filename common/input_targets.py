"""Replace an input target only when this project wrote it.

The `inputs.*` keys may name production data (`s3://logs/...`), and jobs.simulate and
jobs.ingest replace their targets, so they only ever delete or overwrite what they wrote: a
folder holding MARKER, or a file with its sidecar recording the file's size and content hash.
Readers skip names starting with `_`, so the markers never reach the data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath

import pyarrow as pa

from common.cli import InputError
from common.storage import fsspec_for, is_s3, join, local_path, read_json, write_json
from common.tables_io import write_parquet

# Written into every interactions folder these jobs write; readers skip names starting with `_`.
MARKER = "_written_by_next_interest.json"
SIDECAR = ".written_by_next_interest.json"


def sidecar(uri: str) -> str:
    """The marker of a single-file target: `_<name>.written_by_next_interest.json` beside it."""
    base = uri.rstrip("/") if is_s3(uri) else local_path(uri)
    parent, name = posixpath.split(base)
    return join(parent, f"_{name}{SIDECAR}")


def content_stamp(uri: str) -> str:
    """`size:sha256` of a file: survives `cp -r`, tar and touch, unlike size and mtime."""
    fs, path = fsspec_for(uri)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{fs.size(path)}:{digest.hexdigest()}"


def check_replaceable(uri: str, key: str, job: str) -> None:
    """InputError unless uri is absent, a folder with no file, or what these jobs wrote.

    The inputs.* keys may name production data (s3://logs/...), which a synthetic or converted
    run must never delete or overwrite. A folder is ours when it holds MARKER; a file when its
    sidecar records the file's current size and content hash (or is still pending: a run that
    died while writing it), so a file put there later by someone else is not ours even if an
    old sidecar survived.
    """
    fs, path = fsspec_for(uri)
    if not fs.exists(path):
        return
    how = (
        f"{job} replaces {key}, so it refuses to. Point {key} at a new path (--set "
        f"{key}=PATH), or delete {uri} yourself if it is disposable (a root written before "
        "these markers existed: delete it, e.g. `make clean` for the demo's data/)."
    )
    if fs.isdir(path):
        if fs.find(path) and not fs.exists(posixpath.join(path, MARKER)):
            raise InputError(
                f"{key} {uri} holds data that jobs.simulate or jobs.ingest did not "
                f"write (no {MARKER} in it); {how}"
            )
        return
    mark = sidecar(uri)
    recorded = read_json(mark).get("content", "none") if fs.exists(fsspec_for(mark)[1]) else "none"
    if recorded is not None and recorded != content_stamp(uri):
        raise InputError(
            f"{key} {uri} is a file that jobs.simulate or jobs.ingest did not "
            f"write, or that changed since (no matching {mark}); {how}"
        )


def remove_target(uri: str) -> None:
    """Delete uri and its sidecar: what an earlier run of these jobs wrote (checked first with
    check_replaceable)."""
    fs, path = fsspec_for(uri)
    if fs.exists(path) and (fs.isfile(path) or fs.find(path)):
        fs.rm(path, recursive=fs.isdir(path))
    mark = fsspec_for(sidecar(uri))[1]
    if fs.exists(mark):
        fs.rm(mark)


def source_of(settings: dict) -> str:
    """A fingerprint of what a log was made from (simulate's settings; the digests of the tables
    ingest wrote): the same inputs give the same log, so the same fingerprint."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def table_digest(table: pa.Table) -> str:
    """sha256 of a table's column buffers, read in place (no serialised copy)."""
    digest = hashlib.sha256(json.dumps(table.schema.names).encode())
    for column in table.columns:
        for chunk in column.chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    digest.update(memoryview(buf))
    return digest.hexdigest()


def written_source(uri: str) -> str | None:
    """The `source` fingerprint recorded by the marker (a folder) or sidecar (a file) of a log
    these jobs wrote; None for a log they did not write (or wrote before fingerprints)."""
    fs, path = fsspec_for(uri)
    try:
        mark = join(uri, MARKER) if fs.isdir(path) else sidecar(uri)
        return read_json(mark).get("source")
    except (FileNotFoundError, OSError, ValueError):
        return None


def mark_written(
    uri: str, job: str, folder: bool, pending: bool = False, source: str | None = None
) -> None:
    """Record that `job` wrote uri: MARKER in a folder before its files are written (a crashed
    run's leftovers stay replaceable), a sidecar with the file's content stamp after a file is
    (`pending`: a pending one before it, for the same reason). `source`: what the log was made
    from (`source_of`), which jobs.aggregate compares with the log its counts came from."""
    note = {
        "job": job,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "why": "jobs.simulate and jobs.ingest replace only what carries this marker",
        "source": source,
    }
    if folder:
        write_json(join(uri, MARKER), note)
    else:
        write_json(sidecar(uri), {**note, "content": None if pending else content_stamp(uri)})


def write_input_file(
    table: pa.Table, uri: str, job: str, source: str | None = None, write=write_parquet
) -> None:
    """Write an input file (items, clusters, or a one-file log) with `write(table, uri)`, between
    a pending sidecar (a crash leaves it replaceable) and the final one."""
    mark_written(uri, job, folder=False, pending=True, source=source)
    write(table, uri)
    mark_written(uri, job, folder=False, source=source)


def claim_inputs(cfg, job: str) -> None:
    """Check the three input targets (every refusal before anything is deleted), then clear
    them for `job` to write."""
    targets = [
        (cfg.inputs.interactions, "inputs.interactions"),
        (cfg.inputs.items, "inputs.items"),
        (cfg.inputs.clusters, "inputs.clusters"),
    ]
    for uri, key in targets:
        check_replaceable(uri, key, job)
    for uri, _ in targets:
        remove_target(uri)


# What the jobs' --help says about their targets.
REPLACE_NOTE = (
    f"inputs.items and inputs.clusters get a sidecar _NAME{SIDECAR}, a log folder the marker "
    f"{MARKER}. An existing target is replaced only when this project's jobs wrote it (its "
    "marker or sidecar); anything else is refused, never deleted or overwritten"
)

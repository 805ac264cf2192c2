"""The one place that turns a path into a filesystem, and the layout of everything under `root`.

Local paths (also as `file://` URIs) and `s3://bucket/prefix` work; any other scheme (gs://,
hdfs://) is a ConfigError rather than a local folder named after it. S3 goes through s3fs, which
honours the standard `AWS_ENDPOINT_URL` and credentials variables (that is how tests reach moto's
server); pyarrow and Ray Data get the same s3fs wrapped as a pyarrow filesystem. The layout follows
docs/contracts.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import uuid
from typing import Any

import fsspec
import pyarrow.fs as pafs

from common.config import ConfigError


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://") or uri.startswith("s3a://")


def local_path(uri: str) -> str:
    """The absolute local path of a path or file:// URI; ConfigError for any other scheme.

    Without the check `gs://b/x` would silently become the local folder `./gs:/b/x`.
    """
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
        if not uri.startswith("/"):  # file://host/path: only the local host is supported
            raise ConfigError(f"file URI must be file:///absolute/path, got {'file://' + uri!r}")
    elif "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ConfigError(f"unsupported storage scheme {scheme + '://'!r} in {uri!r}: use a local "
                          "path, file:///path or s3://bucket/prefix")
    return os.path.abspath(os.path.expanduser(uri))


def join(root: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and URIs alike.

    An empty root is refused: "" joined would be `/x`, a path in the filesystem root, while
    local_path("") is the cwd, so a check of the one and a write to the other would differ."""
    if not root.strip():
        raise ConfigError(f"empty path to join {'/'.join(map(str, parts))!r} to: a root or "
                          "input path is empty (an unset shell variable?)")
    out = root.rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


def fsspec_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a local path, a file:// or an s3:// URI."""
    if is_s3(uri):
        import s3fs

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
        fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False)
        return fs, uri.split("://", 1)[1]
    return fsspec.filesystem("file"), local_path(uri)


def arrow_fs_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it): what pyarrow and Ray Data read and write with."""
    if is_s3(uri):
        fs, path = fsspec_for(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    return pafs.LocalFileSystem(), local_path(uri)


def exists(uri: str) -> bool:
    fs, path = fsspec_for(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = fsspec_for(uri)
    if not is_s3(uri):
        fs.makedirs(path, exist_ok=True)


def read_text(uri: str) -> str:
    fs, path = fsspec_for(uri)
    with fs.open(path, "r") as f:
        return f.read()


@contextlib.contextmanager
def local_swap(path: str):
    """A hidden temporary path beside the local file `path`, renamed over it when the block
    ends (removed if the block fails): a reader finds the old file or the new one, never a
    part. Readers skip names starting with '.'. (An S3 PUT is atomic by itself.)"""
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(uri: str, text: str) -> None:
    """Write a small text file; local writes go through `local_swap`."""
    fs, path = fsspec_for(uri)
    if is_s3(uri):
        # An S3 PUT is atomic: readers see the old object or the new one, never a part.
        with fs.open(path, "w") as f:
            f.write(text)
        return
    with local_swap(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def create_new(uri: str, text: str) -> bool:
    """Write uri only when nothing is there, in one atomic step (O_EXCL locally, If-None-Match
    on S3): True when this call created it, False when it already existed. What a lock needs."""
    fs, path = fsspec_for(uri)
    if is_s3(uri):
        try:
            fs.pipe_file(path, text.encode(), mode="create")
        except FileExistsError:  # 412: the object exists
            return False
        except OSError as e:  # 409 ConditionalRequestConflict: another create is under way
            if "Conflict" in str(e):
                return False
            raise
        return True
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def list_dirs(uri: str) -> list[str]:
    """Names of the folders directly under uri (empty when it does not exist)."""
    fs, path = fsspec_for(uri)
    if not fs.exists(path):
        return []
    return sorted(
        p["name"].rstrip("/").rsplit("/", 1)[-1]
        for p in fs.ls(path, detail=True)
        if p["type"] == "directory"
    )


def file_stamps(uri: str) -> dict[str, str]:
    """Every file under uri (or uri itself) -> "size:stamp", the stamp being S3's ETag or the
    local mtime: a cheap fingerprint of what a folder holds, so caches notice rewritten inputs."""
    fs, path = fsspec_for(uri)
    if not fs.exists(path):
        return {}
    infos = {path: fs.info(path)} if fs.isfile(path) else fs.find(path, detail=True)
    base = path.rstrip("/")
    out = {}
    for name, info in infos.items():
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified")
        out[name[len(base):].lstrip("/")] = f"{info.get('size')}:{stamp}"
    return out


def newest_write(uri: str) -> dt.datetime | None:
    """When the file uri, or anything under the folder uri, was last written (local mtime or S3
    LastModified, UTC); None when there is no file."""
    fs, path = fsspec_for(uri)
    if not fs.exists(path):
        return None
    infos = {path: fs.info(path)} if fs.isfile(path) else fs.find(path, detail=True)
    stamps = []
    for info in infos.values():
        when = info.get("LastModified") or info.get("mtime")
        if isinstance(when, (int, float)):
            when = dt.datetime.fromtimestamp(when, dt.UTC)
        if isinstance(when, dt.datetime):
            stamps.append(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
    return max(stamps) if stamps else None


def remove(uri: str) -> None:
    fs, path = fsspec_for(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


# Layout under root (docs/contracts.md).
def inputs_dir(root: str) -> str:
    return join(root, "inputs")


def transitions_dir(root: str) -> str:
    return join(root, "stats", "transitions")


def aggregate_state_dir(root: str) -> str:
    return join(root, "stats", "state")


def retrieval_dir(root: str, day: Any, window_days: int) -> str:
    return join(root, "retrieval", f"day={day}_w={window_days}")


def adapters_dir(root: str) -> str:
    return join(root, "adapters")


def checkpoints_dir(root: str) -> str:
    return join(root, "checkpoints")


def tables_dir(root: str) -> str:
    return join(root, "tables")


def table_dir(root: str, version: str) -> str:
    return join(root, "tables", version)


def current_pointer(root: str) -> str:
    return join(root, "tables", "CURRENT")


def report_dir(root: str, report: str) -> str:
    return join(root, "reports", report)


def pipeline_state(root: str) -> str:
    return join(root, "pipeline", "state.json")


def tick_lock(root: str) -> str:
    return join(root, "pipeline", "tick.lock")


def read_current(root: str) -> str | None:
    """The published table version, or None before the first publish."""
    uri = current_pointer(root)
    if not exists(uri):
        return None
    return read_text(uri).strip() or None


def swap_current(root: str, version: str) -> None:
    """Point tables/CURRENT at version: the one atomic step of a publish."""
    write_text(current_pointer(root), version + "\n")

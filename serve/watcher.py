"""Hot swap of the published table (docs/contracts.md "HTTP API": a new version is served within
seconds).

A `TableWatcher` polls `<root>/tables/CURRENT` (local or s3://) from a daemon thread. When the
pointer names a new version it loads that version off the request path and then replaces one
reference; requests read the reference once, so each sees either the old `Lookup` or the new one,
never a half-built one, and none waits on the load. A version that fails to load is logged and the
old one keeps serving; it is retried only after `retry_failed_s`, so a broken publish costs one log
line per retry period rather than one per poll. A watcher with nothing loaded yet retries on every
poll instead: it has nothing to serve, and a transient error (S3) must not cost it
`retry_failed_s`. Nothing here knows about HTTP or Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common.lookup import Lookup
from common.storage import read_current

log = logging.getLogger(__name__)


class TableWatcher:
    """Holds the served `Lookup` and swaps it when `tables/CURRENT` moves."""

    def __init__(
        self,
        root: str,
        poll_interval_s: float = 2.0,
        retry_failed_s: float = 30.0,
        load: Callable[[str, str], Lookup] = Lookup.load,
        read_pointer: Callable[[str], str | None] = read_current,
    ) -> None:
        self.root = root
        self.poll_interval_s = poll_interval_s
        self.retry_failed_s = retry_failed_s
        self._load = load
        self._read_pointer = read_pointer
        self.lookup: Lookup | None = None  # replaced whole, never mutated
        self.loaded_at: float | None = None
        self.last_error: str | None = None
        self.current: str | None = None  # the version CURRENT named at the last good read
        self.current_read = False  # whether the last read of CURRENT succeeded
        self._failed: dict[str, float] = {}  # version -> monotonic time of its last failed load
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()  # one load at a time (poller vs reconfigure)

    def check_once(self) -> bool:
        """Load and swap in the version CURRENT names, if it is new. True when a swap happened."""
        with self._check_lock:
            try:
                version = self._read_pointer(self.root)
            except Exception as e:  # an unreachable store keeps the old table serving
                self.current_read = False
                self.last_error = f"cannot read CURRENT under {self.root}: {e}"
                log.warning(self.last_error)
                return False
            self.current, self.current_read = version, True
            served = self.lookup.version if self.lookup is not None else None
            if version is None or version == served:
                return False
            failed_at = self._failed.get(version)
            waiting = failed_at is not None and time.monotonic() - failed_at < self.retry_failed_s
            if waiting and self.lookup is not None:
                return False
            started = time.monotonic()
            try:
                lookup = self._load(self.root, version)
            except Exception as e:
                self._failed[version] = time.monotonic()
                self.last_error = f"version {version} failed to load, still serving {served}: {e}"
                log.error(self.last_error)
                return False
            self.lookup = lookup  # the one atomic step: a reference assignment
            self.loaded_at = time.time()
            self._failed.pop(version, None)
            self.last_error = None
            log.info(
                "serving table version %s (%d pairs, loaded in %.2fs; was %s)",
                version,
                len(lookup.pairs),
                time.monotonic() - started,
                served,
            )
            return True

    def unready_reason(self) -> str | None:
        """Why this watcher cannot answer although there is something to answer from (CURRENT
        names a version, or CURRENT cannot be read), or None: a table is loaded, or nothing has
        been published yet (answers are then a documented 503, not a fault)."""
        if self.lookup is not None:
            return None
        if not self.current_read:
            return self.last_error or f"CURRENT under {self.root} has not been read yet"
        if self.current is None:
            return None
        return self.last_error or f"version {self.current} is not loaded yet"

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check_once()
            except Exception:  # never let the poller die
                log.exception("table poll failed")

    def start(self) -> TableWatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="table-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

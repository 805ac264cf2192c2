"""remove_other_states: after meta.json moves, every other `v-*` state version goes, on a local
root and an s3:// one alike; never the version meta.json names. No Ray."""

from __future__ import annotations

import pytest

from common import storage
from jobs.aggregate import remove_other_states


def plant(root: str, names: list[str], meta_version: str | None) -> str:
    state = storage.aggregate_state_dir(root)
    for name in names:
        storage.write_text(storage.join(state, name, "shard-00000.parquet"), "x")
    storage.write_json(storage.join(state, "meta.json"),
                       {"version": meta_version} if meta_version else {})
    return state


OURS = "v-20260305T023000-aaaaaa"
PREVIOUS = "v-20260304T023000-bbbbbb"  # what meta.json named before ours
ORPHAN = "v-20260303T180000-cccccc"  # a run killed 32 h before ours started
RUNNING = "v-20260305T010000-dddddd"  # started 1.5 h before ours: maybe still writing


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_remove_other_states_sweeps_the_previous_and_old_orphans_only(where, root, request):
    if where == "s3":
        root = f"{request.getfixturevalue('s3_bucket')}/run"
    state = plant(root, [PREVIOUS, ORPHAN, RUNNING, OURS, "v-junk", "keep-me"], OURS)
    remove_other_states(root, OURS, PREVIOUS)
    assert storage.list_dirs(state) == ["keep-me", RUNNING, OURS]
    assert storage.exists(storage.join(state, "meta.json"))
    # A version that meta.json names is never removed, even when the caller's is another one.
    other = "v-20260307T023000-eeeeee"
    storage.write_text(storage.join(state, other, "shard-00000.parquet"), "x")
    remove_other_states(root, other, OURS)
    assert storage.list_dirs(state) == ["keep-me", OURS, other]

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


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_remove_other_states_keeps_the_new_and_the_named_version(where, root, request):
    if where == "s3":
        root = f"{request.getfixturevalue('s3_bucket')}/run"
    state = plant(root, ["v-1-old", "v-2-orphan", "v-3-new", "keep-me"], "v-3-new")
    remove_other_states(root, "v-3-new")
    assert storage.list_dirs(state) == ["keep-me", "v-3-new"]
    assert storage.exists(storage.join(state, "meta.json"))
    # A version that meta.json names is never removed, even when the caller's is another one.
    storage.write_text(storage.join(state, "v-4-other", "shard-00000.parquet"), "x")
    remove_other_states(root, "v-4-other")
    assert storage.list_dirs(state) == ["keep-me", "v-3-new", "v-4-other"]

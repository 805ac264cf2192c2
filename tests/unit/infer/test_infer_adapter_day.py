"""jobs.infer picks the adapter a table of day d may serve: none that learned from day d or later
(a backfilled table would be scored on its adapter's own training days)."""

from __future__ import annotations

import datetime as dt

import pytest

from common.cli import InputError
from common.config import load_config
from common.model import publish_adapter
from common.storage import exists, join, tables_dir, write_json
from jobs import infer
from jobs.infer import adapter_path, check_adapter_day
from tests.infer_inputs import AS_OF, cfg_sets, write_inputs


def publish(root, tmp_path, version: str, as_of: str | None, created: str = "") -> str:
    """An adapter folder with only its meta.json (no weights: nothing here loads it)."""
    local = tmp_path / f"local-{version}"
    local.mkdir()
    meta = {"as_of": as_of, "created_at": created} if as_of else {}
    return publish_adapter(str(local), root, version, meta)  # moves LATEST to it


def hybrid(root, *sets):
    return load_config(None, [f"root={root}", "infer.strategy=hybrid", *sets])


def test_latest_serves_its_own_day_and_later(root, tmp_path):
    publish(root, tmp_path, "v0301", "2026-03-01")
    latest = publish(root, tmp_path, "v0310", "2026-03-10")
    assert adapter_path(hybrid(root), dt.date(2026, 3, 10)) == latest
    assert adapter_path(hybrid(root), dt.date(2026, 3, 17)) == latest


def test_a_backfill_gets_the_adapter_latest_named_on_its_day(root, tmp_path):
    publish(root, tmp_path, "b-early", "2026-03-01", "2026-03-01T01:00:00+00:00")
    # Fine-tuned again as of the same day (a rerun): the later one was LATEST after it.
    publish(root, tmp_path, "a-rerun", "2026-03-01", "2026-03-01T05:00:00+00:00")
    publish(root, tmp_path, "v0305", "2026-03-05")
    publish(root, tmp_path, "v0310", "2026-03-10")
    day = dt.date(2026, 3, 7)
    assert adapter_path(hybrid(root), day) == join(root, "adapters", "v0305")
    assert adapter_path(hybrid(root), dt.date(2026, 3, 4)) == join(root, "adapters", "a-rerun")
    with pytest.raises(InputError) as e:
        adapter_path(hybrid(root), dt.date(2026, 2, 28))
    assert str(e.value) == (
        f"no adapter under {join(root, 'adapters')} was fine-tuned as of 2026-02-28 or before "
        "(LATEST, v0310, as of 2026-03-10, learned from days the table of 2026-02-28 would "
        "serve): run jobs.finetune with as_of=2026-02-28 or earlier, or set infer.adapter"
    )
    # A strategy without an adapter needs none.
    assert adapter_path(load_config(None, [f"root={root}", "infer.strategy=rag"]), day) is None


def test_an_adapter_without_a_recorded_day_is_served_as_before(root, tmp_path):
    latest = publish(root, tmp_path, "by-hand", None)
    assert adapter_path(hybrid(root), dt.date(2020, 1, 1)) == latest
    assert check_adapter_day(latest, dt.date(2020, 1, 1)) is None


def test_a_named_adapter_that_learned_the_tables_days_is_refused(root, tmp_path):
    named = str(tmp_path / "mine")
    write_json(join(named, "meta.json"), {"as_of": "2026-03-10"})
    assert check_adapter_day(named, dt.date(2026, 3, 10)) == dt.date(2026, 3, 10)
    with pytest.raises(InputError, match=r"fine-tuned as of 2026-03-10, on days the table of "
                       r"2026-03-09 would serve: set infer.adapter to one fine-tuned as of "
                       r"2026-03-09 or before"):
        check_adapter_day(named, dt.date(2026, 3, 9))


def test_the_job_refuses_before_building_anything(root, tmp_path):
    write_inputs(root)
    named = str(tmp_path / "mine")
    write_json(join(named, "meta.json"), {"as_of": str(AS_OF + dt.timedelta(days=1))})
    cfg = load_config(None, cfg_sets(root, "infer.strategy=hybrid", f"infer.adapter={named}"))
    with pytest.raises(InputError, match="on days the table of 2026-03-17 would serve"):
        infer.run(cfg)
    assert not exists(tables_dir(root))

"""jobs.infer on inputs that used to crash it or hide a failure: counts naming a cluster the
catalog dropped, a model without a chat template, and the exit status of a run that did not
publish."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest
from infer_inputs import AS_OF, IDS, NAMES, make_cfg

from common import schemas, storage
from common.tables_io import read_table, write_parquet
from jobs import infer

pytestmark = [pytest.mark.timeout(300)]


def table_rows(root: str, version: str) -> dict[tuple[int, int], list[int]]:
    t = read_table(storage.join(storage.table_dir(root, version), "table.parquet"))
    t = t.sort_by([("c1", "ascending"), ("c2", "ascending"), ("rank", "ascending")])
    out: dict[tuple[int, int], list[int]] = {}
    for a, b, c in zip(*(t[n].to_pylist() for n in ("c1", "c2", "c3")), strict=True):
        out.setdefault((a, b), []).append(c)
    return out


def assert_valid_table(root: str, version: str, ids: list[int], k: int = 5) -> None:
    rows = table_rows(root, version)
    assert set(rows) == {(a, b) for a in ids for b in ids if a != b}
    for (a, b), c3s in rows.items():
        assert len(c3s) == k == len(set(c3s)), (a, b, c3s)
        assert set(c3s) <= set(ids) and not {a, b} & set(c3s), (a, b, c3s)


@pytest.mark.ray
def test_counts_naming_a_dropped_cluster_cost_rows_not_a_crash(
    ray_session, infer_root, tiny_model_dir
):
    """The catalog lost a cluster whose transitions are still in the window (and among the
    held-out pairs and the retrieved successors): LLM strategies publish a valid table."""
    kept = IDS[:-1]
    clusters = pa.table(
        {
            "cluster_id": pa.array(kept, pa.int32()),
            "name": NAMES[:-1],
            "description": [""] * len(kept),
        },
        schema=schemas.CLUSTERS,
    )
    write_parquet(clusters, storage.join(infer_root, "inputs", "clusters.parquet"))
    for strategy in ("rag", "base"):
        result = infer.run(
            make_cfg(
                infer_root,
                f"infer.strategy={strategy}",
                f"model.name_or_path={tiny_model_dir}",
                "guards.enforce=false",
            )
        )
        assert result["published"], strategy
        assert_valid_table(infer_root, result["version"], kept)
        assert result["guards"]["hit_rate"]["n_events"] > 0


@pytest.mark.ray
def test_a_model_without_a_chat_template_runs(ray_session, infer_root, tiny_model_dir, tmp_path):
    plain = tmp_path / "plain-model"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").unlink()
    config = json.loads((plain / "tokenizer_config.json").read_text())
    assert "chat_template" not in config
    result = infer.run(
        make_cfg(
            infer_root,
            "infer.strategy=base",
            f"model.name_or_path={plain}",
            "guards.enforce=false",
        )
    )
    assert result["published"]
    assert_valid_table(infer_root, result["version"], IDS)


def argv(root: str, *overrides: str) -> list[str]:
    sets = [f"root={root}", f"as_of={AS_OF}", "infer.top_k=5", *overrides]
    return [a for s in sets for a in ("--set", s)]


def summary_line(capsys) -> dict:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def test_main_exits_1_when_the_table_is_not_published(infer_root, capsys):
    """`ray job submit ... jobs.infer` reports a run that published nothing as FAILED; the
    summary line is printed first. run() (the pipeline's) returns the summary as before."""
    # One answer per pair (hit rate@10 about 0.47) against a floor of 0.9: the guard fails.
    strict = ("infer.strategy=frequency", "infer.top_k=1", "guards.min_hit_rate=0.9")
    fail = argv(infer_root, *strict)
    with pytest.raises(SystemExit) as done:
        infer.main(fail)
    assert done.value.code == 1
    out = summary_line(capsys)
    assert not out["published"] and out["reason"].startswith("guard failed: hit_rate")
    assert storage.read_current(infer_root) is None

    assert not infer.run(make_cfg(infer_root, *strict))[
        "published"
    ]  # no exit: the pipeline reads the summary

    published = infer.main(argv(infer_root, "infer.strategy=frequency"))
    assert published["published"] and summary_line(capsys)["published"]
    assert storage.read_current(infer_root) == published["version"]

    # A day before the served table's: written, not published, so exit status 1 as well.
    with pytest.raises(SystemExit) as done:
        infer.main(argv(infer_root, "infer.strategy=frequency", "as_of=2026-03-15"))
    assert done.value.code == 1
    out = summary_line(capsys)
    assert not out["published"] and "CURRENT unchanged" in out["reason"]
    assert storage.read_current(infer_root) == published["version"]

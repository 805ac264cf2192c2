"""jobs.infer end to end on tiny inputs: frequency and LLM strategies, guards, atomic publish."""

from __future__ import annotations

import datetime as dt
import glob
import os
import tempfile
from collections import Counter

import pyarrow as pa
import pytest
import torch
from infer_inputs import (
    AS_OF,
    IDS,
    assert_rows_are,
    differs,
    make_cfg,
    manifest,
    model_reference,
    published_table,
    rows_by_pair,
    write_inputs,
)

from common import storage
from common.lookup import Lookup
from common.transitions import read_transitions
from jobs import infer

pytestmark = [pytest.mark.timeout(300)]
DAY = dt.timedelta(days=1)


def window_ranking(root: str, day: dt.date, window_days: int, k: int) -> dict:
    """Plain-Python frequency ranking of [day - W, day): count desc, then c3 asc."""
    counts: Counter = Counter()
    for r in read_transitions(root, day - window_days * DAY, day).to_pylist():
        counts[(r["c1"], r["c2"], r["c3"])] += r["count"]
    per: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (a, b, c), n in counts.items():
        per.setdefault((a, b), []).append((-n, c))
    return {p: [c for _, c in sorted(v)[:k]] for p, v in per.items()}


def assert_valid_rows(table: pa.Table, k: int) -> dict:
    """Every ordered pair has k distinct real clusters, none equal to c1 or c2."""
    rows = rows_by_pair(table)
    assert set(rows) == {(a, b) for a in IDS for b in IDS if a != b}
    for (a, b), answers in rows.items():
        c3s = [c for c, _ in answers]
        assert len(c3s) == k and len(set(c3s)) == k, (a, b, c3s)
        assert set(c3s) <= set(IDS) and not {a, b} & set(c3s), (a, b, c3s)
    return rows


def test_frequency_table_equals_window_ranking(infer_root):
    cfg = make_cfg(infer_root, "infer.strategy=frequency")
    result = infer.run(cfg)
    assert result["published"] and storage.read_current(infer_root) == result["version"]
    rows = assert_valid_rows(published_table(infer_root, result["version"]), 5)
    expected = window_ranking(infer_root, AS_OF, cfg.retrieval.window_days, 5)
    for pair, answers in rows.items():
        freq = [c for c, s in answers if s == "frequency"]
        assert freq == expected[pair][: len(freq)] and len(freq) == min(5, len(expected[pair]))
        assert all(s == "backoff" for _, s in answers[len(freq) :])
    m = manifest(infer_root, result["version"])
    assert m["strategy"] == "frequency" and m["as_of"] == str(AS_OF) and m["window_days"] == 14
    assert m["rag_snapshot_day"] == str(AS_OF) and m["guards"]["passed"]
    assert m["guards"]["hit_rate"]["n_events"] > 0
    assert 0 < m["compute_seconds"] < result["seconds"]["total"]


def test_crash_between_write_and_swap_keeps_current(infer_root, monkeypatch):
    first = infer.run(make_cfg(infer_root, "infer.strategy=frequency", f"as_of={AS_OF - DAY}"))
    assert storage.read_current(infer_root) == first["version"]

    def crash(root, version):
        raise RuntimeError("injected crash before the swap")

    monkeypatch.setattr(storage, "swap_current", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        infer.run(make_cfg(infer_root, "infer.strategy=frequency"))
    assert storage.read_current(infer_root) == first["version"]
    written = [
        v for v in storage.list_dirs(storage.tables_dir(infer_root)) if v != first["version"]
    ]
    assert len(written) == 1  # the new version was written in full, but never named by CURRENT
    assert storage.exists(storage.join(storage.table_dir(infer_root, written[0]), "manifest.json"))
    assert Lookup.load(infer_root, storage.read_current(infer_root)).version == first["version"]

    monkeypatch.undo()
    again = infer.run(make_cfg(infer_root, "infer.strategy=frequency"))
    assert storage.read_current(infer_root) == again["version"] != first["version"]


def test_a_table_for_an_earlier_day_is_written_but_never_moves_current_back(infer_root):
    later = infer.run(make_cfg(infer_root, "infer.strategy=frequency"))
    earlier = infer.run(
        make_cfg(infer_root, "infer.strategy=frequency", f"as_of={AS_OF - 2 * DAY}")
    )
    assert not earlier["published"] and earlier["current"] == later["version"]
    assert storage.read_current(infer_root) == later["version"]
    assert "CURRENT unchanged" in earlier["reason"]
    # Written in full, so jobs.evaluate can score it.
    assert manifest(infer_root, earlier["version"])["as_of"] == str(AS_OF - 2 * DAY)
    assert Lookup.load(infer_root, earlier["version"]).version == earlier["version"]
    # The same day again is a rerun, not a step back: it publishes.
    same = infer.run(make_cfg(infer_root, "infer.strategy=frequency"))
    assert same["published"] and storage.read_current(infer_root) == same["version"]


@pytest.mark.ray
def test_llm_answers_valid_distinct_and_deterministic(
    ray_session, infer_root, tiny_model_dir, monkeypatch
):
    """A random tiny model fails the valid-rate guard; enforce=false publishes anyway and the
    manifest records the override. Two runs give the same table. The actors size their torch
    threads from their own node's cores, not the driver's (a cluster's head is smaller than
    its workers): the driver here claims 64 cores."""
    node_cores = os.cpu_count()
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    cfg = make_cfg(
        infer_root,
        "infer.strategy=rag",
        f"model.name_or_path={tiny_model_dir}",
        "guards.enforce=false",
        "infer.llm_weight=1",  # the model's answers alone
    )
    first = infer.run(cfg)
    second = infer.run(cfg)
    assert first["published"] and second["published"]
    t1 = published_table(infer_root, first["version"])
    t2 = published_table(infer_root, second["version"])
    rows = assert_valid_rows(t1, 5)
    assert all(s == "llm" for answers in rows.values() for _, s in answers)
    assert t1.equals(t2)
    m = manifest(infer_root, second["version"])
    assert m["guards"]["override"] is True and "valid_rate" in m["guards"]["failed"]
    assert m["strategy"] == "rag" and m["base_model"] == tiny_model_dir
    assert m["rag_snapshot_day"] == str(AS_OF)
    assert first["pairs_per_s"] > 0 and 0 < first["mfu"] <= 1.0  # a fraction of the ceiling
    assert first["perf"]["rows"] >= 56 and first["perf"]["ceiling_gflops_per_s"] > 0
    assert first["perf"]["device"] == "cpu"
    assert first["perf"]["threads_per_actor"] == node_cores  # infer.pool_size 1

    # infer.llm_weight = 0: the counts alone rank the answers, so the table is the frequency one.
    counts_only = infer.run(
        make_cfg(
            infer_root,
            "infer.strategy=rag",
            f"model.name_or_path={tiny_model_dir}",
            "guards.enforce=false",
            "infer.llm_weight=0",
        )
    )
    freq = infer.run(make_cfg(infer_root, "infer.strategy=frequency"))
    assert rows_by_pair(published_table(infer_root, counts_only["version"])) == rows_by_pair(
        published_table(infer_root, freq["version"])
    )
    assert manifest(infer_root, counts_only["version"])["llm_weight"] == 0


@pytest.mark.parametrize("strategy", ["base", "rag", "ft"])
def test_llm_table_rows_are_the_models_own_ranking(
    ray_session, infer_root, tiny_model_dir, tmp_path, strategy
):
    """Each published row is the model's own top 5 for its pair, in rank order with its
    probability, as the scorer gives it for that one prompt outside Ray: the Ray Data pass
    keeps every answer with its pair (rows come back out of order). `rag` prompts carry the
    day's retrieved successors and `ft` scores with the adapter merged: each reference differs
    from the base model's on plain prompts, so a job that dropped the RAG line or the adapter
    would publish the base rows and fail here."""
    adapter = None
    if strategy == "ft":
        adapter = broken_adapter(tiny_model_dir, str(tmp_path / "adapter"))
    cfg = make_cfg(
        infer_root,
        f"infer.strategy={strategy}",
        f"model.name_or_path={tiny_model_dir}",
        "model.dtype=float32",
        "guards.enforce=false",
        "infer.llm_weight=1",  # the model's answers alone, no blend with the counts
        *([f"infer.adapter={adapter}"] if adapter else []),
    )
    result = infer.run(cfg)
    assert result["published"] and result["adapter"] == adapter
    got = rows_by_pair(published_table(infer_root, result["version"]), "score")
    snapshot = infer.snapshot_for(cfg, AS_OF)[0] if strategy == "rag" else None
    ref = model_reference(cfg, tiny_model_dir, adapter, snapshot)
    assert_rows_are(got, ref)
    if strategy != "base":
        assert differs(ref, model_reference(cfg, tiny_model_dir, None, None))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: it would run")
def test_num_gpus_is_each_actors_gpu_request(ray_session, infer_root, tiny_model_dir, caplog):
    """infer.num_gpus is what Ray reserves for each scoring actor. The test session's Ray has
    one logical GPU and no device: an actor given it sees CUDA_VISIBLE_DEVICES=0 and, with this
    CPU build of torch, the job stops with one clear line (no silent CPU run) and CURRENT stays.
    Asking for more GPUs than the cluster has is said up front (it would wait for a GPU node)."""
    from common.model import ModelError
    from common.rayinit import warn_if_gpus_missing

    base = ["infer.strategy=rag", f"model.name_or_path={tiny_model_dir}", "guards.enforce=false"]
    first = infer.run(make_cfg(infer_root, *base))
    assert first["published"] and first["perf"]["device"] == "cpu"
    current = storage.current_pointer(infer_root)
    before = storage.read_text(current)
    with pytest.raises(ModelError, match=r"^a GPU was asked for, .*CUDA_VISIBLE_DEVICES=0\)"):
        infer.run(make_cfg(infer_root, *base, "infer.num_gpus=1"))
    assert storage.read_text(current) == before

    caplog.clear()
    with caplog.at_level("WARNING", logger="common.rayinit"):
        warn_if_gpus_missing(1, "infer.num_gpus", "infer.num_gpus=0")
        assert not caplog.records
        warn_if_gpus_missing(2, "infer.num_gpus", "infer.num_gpus=0")
    assert "asks for 2 GPU(s) per worker and this Ray cluster has 1 now" in caplog.text


def broken_adapter(model_dir: str, path: str) -> str:
    """A LoRA adapter with large random weights: what a diverged fine-tune leaves behind."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 1.0)
    peft_model.save_pretrained(path)
    return path


@pytest.mark.ray
def test_broken_adapter_fails_guard_and_current_stays(
    ray_session, infer_root, tiny_model_dir, tmp_path
):
    # Published: the frequency table of two days earlier (so the regression guard has days
    # that neither table saw).
    before = infer.run(make_cfg(infer_root, "infer.strategy=frequency", f"as_of={AS_OF - 2 * DAY}"))
    adapter = broken_adapter(tiny_model_dir, str(tmp_path / "adapter"))
    result = infer.run(
        make_cfg(
            infer_root,
            "infer.strategy=ft",
            f"model.name_or_path={tiny_model_dir}",
            f"infer.adapter={adapter}",
        )
    )
    assert not result["published"] and result["version"] is None
    assert storage.read_current(infer_root) == before["version"]
    assert storage.list_dirs(storage.tables_dir(infer_root)) == [before["version"]]
    g = result["guards"]
    assert "valid_rate" in g["failed"] and g["valid_rate"]["value"] < 0.9
    assert result["reason"].startswith("guard failed: valid_rate ")
    assert f"{g['valid_rate']['value']:.3f} < 0.900" in result["reason"]
    assert g["regression"]["published_version"] == before["version"]
    assert g["regression"].get("n_events", 0) > 0  # the guard compared on common days
    report = storage.join(storage.report_dir(infer_root, "default"), f"infer-{AS_OF}-ft.json")
    assert storage.read_json(report)["reason"] == result["reason"]


def adapter_copies() -> set[str]:
    """Adapter folders in the temp folder, up to two levels down."""
    tmp = tempfile.gettempdir()
    return {
        os.path.dirname(p)
        for pattern in ("*/adapter_config.json", "*/*/adapter_config.json")
        for p in glob.glob(os.path.join(tmp, pattern))
    }


@pytest.mark.ray
@pytest.mark.s3
def test_root_on_s3_stored_snapshot_and_adapter(ray_session, s3_bucket, tiny_model_dir, tmp_path):
    from common import retrieval
    from common.model import publish_adapter

    root = f"{s3_bucket}/run"
    write_inputs(root)
    cfg = make_cfg(root, "infer.strategy=frequency")
    W = cfg.retrieval.window_days
    snap = retrieval.build_snapshot(read_transitions(root, AS_OF - W * DAY, AS_OF), AS_OF, W, 10)
    retrieval.write_snapshot(root, AS_OF, W, snap)
    freq = infer.run(cfg)
    assert freq["snapshot"] == "stored" and storage.read_current(root) == freq["version"]
    assert_valid_rows(published_table(root, freq["version"]), 5)
    lookup = Lookup.load(root, freq["version"])
    assert len(lookup.pairs) == 56

    # hybrid: the adapter that adapters/LATEST names on S3, RAG from the stored snapshot.
    local = broken_adapter(tiny_model_dir, str(tmp_path / "adapter"))
    publish_adapter(local, root, "a1", {"base_model": tiny_model_dir, "as_of": str(AS_OF)})
    hybrid_cfg = make_cfg(
        root,
        "infer.strategy=hybrid",
        f"model.name_or_path={tiny_model_dir}",
        "model.dtype=float32",
        "guards.enforce=false",
        "infer.llm_weight=1",  # the model's answers alone: comparable with the reference
    )
    before = adapter_copies()
    hybrid = infer.run(hybrid_cfg)
    assert hybrid["published"] and storage.read_current(root) == hybrid["version"]
    assert hybrid["adapter"] == f"{root}/adapters/a1"
    # The actors downloaded the adapter to load it and kept no copy (one per actor per refresh
    # used to stay in the node's temp folder).
    assert adapter_copies() - before == set()
    m = manifest(root, hybrid["version"])
    assert m["adapter"] == f"{root}/adapters/a1" and m["guards"]["override"] is True
    assert m["adapter_as_of"] == str(AS_OF)  # what jobs.evaluate's leak check reads
    table = published_table(root, hybrid["version"])
    assert_valid_rows(table, 5)
    # The rows are the adapted model's on RAG prompts from the stored snapshot (the actors read
    # the adapter from S3; the reference scores the local copy it was published from).
    ref = model_reference(hybrid_cfg, tiny_model_dir, local, snap)
    assert_rows_are(rows_by_pair(table, "score"), ref)
    assert differs(ref, model_reference(hybrid_cfg, tiny_model_dir, None, snap))
    assert differs(ref, model_reference(hybrid_cfg, tiny_model_dir, local, None))

"""LoRA fine-tune for day d with Ray Train (issue 3 item 5; docs/contracts.md "Data flow").

Examples come from the transitions of [d - W, d) (common/training.py `build_data`: diversified,
the last days held out, each the exact inference prompt + answer). The per-worker loop is
common/training.py `train_loop_per_worker`, run by a Ray Train V2 `TorchTrainer` (DDP: gloo on
CPU, NCCL on GPU) with checkpoints under `<root>/checkpoints/<run name>` (local or S3) and
`FailureConfig(max_failures)`: a failed worker group restarts from the last checkpoint. The run
name is a hash of the day, the examples and the settings that decide what is learned (not
threads, checkpoint cadence or resources), so re-running the same job after a crash resumes it
too. `finetune.num_workers=0` runs the same loop in the driver without Ray Train.
The final adapter is published under `<root>/adapters/<version>/` (PEFT format + meta.json with
base model, data window, prompt settings and metrics) and `adapters/LATEST` moves to it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time

from common import storage, training
from common.catalog import load_catalog
from common.cli import InputError, job_parser, run_main
from common.config import Config, FinetuneConfig
from common.model import ModelError, load_tokenizer, publish_adapter, resolve_model
from common.transitions import list_days, read_transitions

log = logging.getLogger(__name__)
DAY = dt.timedelta(days=1)


def finetune_day(cfg: Config) -> dt.date:
    """The day d the adapter is for: cfg.as_of, else the last day with counts + 1."""
    if cfg.as_of is not None:
        return cfg.as_of
    days = list_days(cfg.root)
    if not days:
        raise InputError(f"no transition counts under {cfg.root}: run jobs.aggregate first")
    return days[-1] + DAY


def loop_config(cfg: Config, data: dict, rag: bool) -> dict:
    """The plain-data config `train_loop_per_worker` reads (it travels to every worker); `rag`:
    the prompts carry a RAG line (DataSpec.rag)."""
    ft = cfg.finetune
    return {
        "model": cfg.model.model_dump(),
        "examples": data["train"],
        "eval": data["eval"],
        "prefix": data["prefix"],
        "lora_r": ft.lora_r,
        "lora_alpha": ft.lora_alpha,
        "lora_dropout": ft.lora_dropout,
        "target_modules": list(ft.target_modules),
        "learning_rate": ft.learning_rate,
        "epochs": ft.epochs,
        "batch_size": ft.batch_size,
        "warmup_fraction": ft.warmup_fraction,
        "checkpoint_every_steps": ft.checkpoint_every_steps,
        "seed": ft.seed,
        "threads": ft.threads,
        "cpus_per_worker": ft.cpus_per_worker,
        "bf16": ft.bf16,
        "use_gpu": ft.use_gpu,
        "eval_batch_size": ft.eval_batch_size,
        "eval_base": ft.eval_base,
        # held-out rows also scored mixed with the counts, as a RAG strategy's table is
        "llm_weight": cfg.infer.llm_weight if rag else 1.0,
    }


ABANDONED_AFTER = dt.timedelta(hours=24)


def remove_abandoned_checkpoints(root: str, now: dt.datetime) -> list[str]:
    """Remove the checkpoints of other runs nothing has written to for ABANDONED_AFTER.

    A fine-tune killed or failed on day d is retried by the next tick as of d + 1: another
    window, so another run name, and d's checkpoints would stay forever (~113 MB each for the
    default model). A run written to within the day may be a bare jobs.finetune beside this one
    (the tick's lock does not cover it) and stays."""
    folder = storage.checkpoints_dir(root)
    removed = []
    for run in storage.list_dirs(folder):
        written = storage.newest_write(storage.join(folder, run))
        if written is not None and written < now - ABANDONED_AFTER:
            storage.remove(storage.join(folder, run))
            removed.append(run)
    if removed:
        log.info("removed abandoned checkpoints: %s", ", ".join(removed))
    return removed


def run_name(cfg: Config, day: dt.date, data: dict) -> str:
    """Same day + learning settings + model + examples -> same name: a re-run resumes the stored
    checkpoints, also with other threads, checkpoint cadence or resources (RUNTIME_ONLY)."""
    h = hashlib.sha1()
    h.update(
        json.dumps(
            [
                str(day),
                cfg.finetune.learning_settings(),
                cfg.model.name_or_path,
                cfg.prompt.model_dump(mode="json"),
            ],
            sort_keys=True,
        ).encode()
    )
    h.update(json.dumps(data["train"]).encode())
    return f"finetune-{day:%Y%m%d}-{h.hexdigest()[:10]}"


# What torch says on a worker given a GPU it cannot use (a CPU build, no visible device).
NO_CUDA = re.compile(
    r"Distributed package doesn't have NCCL built in|Torch not compiled with CUDA enabled"
    r"|No CUDA GPUs are available|Found no NVIDIA driver"
)


def scaling_config(ft: FinetuneConfig):
    """Ray Train's workers from config: `num_workers` DDP ranks (gloo on CPU; NCCL when
    `use_gpu`, each rank on the GPU Ray gives it), each reserving `cpus_per_worker` CPUs and,
    with `use_gpu`, `gpus_per_worker` GPUs: what the autoscaler starts GPU nodes for."""
    import ray.train

    resources = {"CPU": ft.cpus_per_worker}
    if ft.use_gpu:
        resources["GPU"] = ft.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=ft.num_workers, use_gpu=ft.use_gpu, resources_per_worker=resources
    )


def fit_ray(cfg: Config, config: dict, name: str, scratch: str) -> tuple[dict, str]:
    """Run the loop under a TorchTrainer; (final metrics, local copy of the final adapter)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from common.rayinit import (
        init_ray,
        placement_group_ids,
        release_placement_groups,
        warn_if_gpus_missing,
    )

    init_ray(cfg)
    ft = cfg.finetune
    if ft.use_gpu:
        warn_if_gpus_missing(ft.gpus_per_worker, "finetune.use_gpu", "finetune.use_gpu=false")
    fs, path = storage.arrow_fs_for(storage.checkpoints_dir(cfg.root))
    if not storage.is_s3(cfg.root):
        os.makedirs(path, exist_ok=True)
    trainer = TorchTrainer(
        training.train_loop_per_worker,
        train_loop_config={**config, "use_ray": True},
        scaling_config=scaling_config(ft),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=ft.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    before = placement_group_ids()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        if n := release_placement_groups(before):
            log.info("released %d placement group(s) the failed run still held", n)
        missing = NO_CUDA.search(str(e)) if ft.use_gpu else None
        if missing is None:
            raise
        raise ModelError(
            f"finetune.use_gpu=true, but torch on the Ray Train workers has no CUDA "
            f"({missing.group(0)}): install a CUDA build of torch on the GPU nodes, or set "
            "finetune.use_gpu=false"
        ) from e
    if result.checkpoint is None:
        raise RuntimeError(f"fine-tune {name} finished without a checkpoint")
    local = os.path.join(scratch, "final")
    result.checkpoint.to_directory(local)
    return dict(result.metrics or {}), os.path.join(local, "adapter")


def run(cfg: Config) -> dict:
    t0 = time.perf_counter()
    ft = cfg.finetune
    day = finetune_day(cfg)
    spec = training.DataSpec.from_config(cfg, day)
    start, hold, _ = spec.windows()
    transitions = read_transitions(cfg.root, start - cfg.retrieval.window_days * DAY, day)
    catalog = load_catalog(cfg.inputs.clusters)
    model_dir = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    data = training.build_data(spec, transitions, catalog, tokenizer)
    if not data["train"]:
        raise InputError(f"no training transitions in [{start}, {hold}) under {cfg.root}")
    data_s = time.perf_counter() - t0
    log.info("fine-tune data for %s: %s", day, json.dumps(data["stats"]))
    config = loop_config(cfg, data, spec.rag)
    name = run_name(cfg, day, data)
    scratch = tempfile.mkdtemp(prefix="finetune-")
    try:
        if ft.num_workers == 0:
            # In the driver, without Ray: checkpoints in a local folder (resumable) under root
            # when root is local, else in the scratch folder.
            ckpt_dir = (
                os.path.join(scratch, "checkpoints")
                if storage.is_s3(cfg.root)
                else storage.fsspec_for(storage.join(storage.checkpoints_dir(cfg.root), name))[1]
            )
            metrics = training.train_loop_per_worker({**config, "checkpoint_dir": ckpt_dir})
            adapter_local = metrics.pop("adapter_dir")
        else:
            metrics, adapter_local = fit_ray(cfg, config, name, scratch)
        version = f"{day:%Y%m%d}-{name.rsplit('-', 1)[1]}-{dt.datetime.now(dt.UTC):%H%M%S}"
        meta = {
            "version": version,
            "as_of": str(day),
            "base_model": cfg.model.name_or_path,
            "model_dir": model_dir,
            "window": data["stats"]["train_window"],
            "holdout": data["stats"]["holdout_window"],
            "data": data["stats"],
            "prompt": cfg.prompt.model_dump(mode="json"),
            "finetune": ft.model_dump(mode="json"),
            "run_name": name,
            "metrics": metrics,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        adapter = publish_adapter(adapter_local, cfg.root, version, meta)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not ft.keep_checkpoints:
        # Published: the checkpoints were only for resuming this run.
        storage.remove(storage.join(storage.checkpoints_dir(cfg.root), name))
        remove_abandoned_checkpoints(cfg.root, dt.datetime.now(dt.UTC))
    summary = {
        "as_of": str(day),
        "version": version,
        "adapter": adapter,
        "run_name": name,
        "examples": data["stats"]["examples"],
        "window": data["stats"]["train_window"],
        "holdout": data["stats"]["holdout_window"],
        "heldout_acc@1": metrics.get("heldout", {}).get("acc@1"),
        "blend_acc@1": metrics.get("heldout", {}).get("blend", {}).get("acc@1"),
        "base_acc@1": metrics.get("base", {}).get("acc@1"),
        "frequency_acc@1": metrics.get("frequency", {}).get("acc@1"),
        "tokens_per_s": metrics.get("tokens_per_s_all_workers"),
        "mfu": metrics.get("mfu"),
        "start_step": metrics.get("start_step"),
        "metrics": metrics,
        "seconds": {"data": data_s, "total": time.perf_counter() - t0},
    }
    storage.write_json(
        storage.join(storage.report_dir(cfg.root, cfg.report), f"finetune-{day}.json"), summary
    )
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(
        "python -m jobs.finetune",
        "LoRA fine-tune (Ray Train) on the transitions of [d - finetune.window_days, d); the "
        "last finetune.holdout_days are held out and scored (adapter, base model, frequency "
        "top-1; with RAG prompts and infer.llm_weight < 1 also the adapter's rows mixed with the "
        "counts, as the hybrid table is).",
        reads="stats/transitions/, inputs.clusters, the base model (model.*), finetune.*, "
        "prompt.*, retrieval.window_days (RAG successors of each example), infer.llm_weight "
        "(the held-out blend line)",
        writes="checkpoints/<run>/ (Ray Train; a re-run resumes it, also with other threads or "
        "resources; removed once the adapter is published unless finetune.keep_checkpoints, with "
        "those of other runs untouched for a day), "
        "adapters/<version>/ (PEFT adapter + meta.json), adapters/LATEST, "
        "reports/<report>/finetune-<day>.json",
    )
    return run_main(parser, run, argv)


if __name__ == "__main__":
    main()

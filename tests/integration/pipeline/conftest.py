"""A tiny simulated log, aggregated once per session, and a config on the tiny model."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from common.config import load_config

START = dt.date(2026, 1, 1)
DAYS = 30  # a simulated month


def tiny_overrides(root: str, model_dir: str) -> list[str]:
    return [
        f"root={root}",
        "ray.num_cpus=2",
        "simulate.n_clusters=8",
        "simulate.items_per_cluster=3",
        "simulate.n_users=300",
        "simulate.n_events=24000",
        f"simulate.days={DAYS}",
        f"simulate.start_date={START}",
        "aggregate.num_partitions=2",
        "aggregate.drift_min_support=5",
        "retrieval.window_days=4",
        "retrieval.top_n=5",
        f"model.name_or_path={model_dir}",
        "model.dtype=float32",
        "finetune.window_days=6",
        "finetune.holdout_days=1",
        "finetune.max_examples=32",
        "finetune.batch_size=8",
        "finetune.epochs=1",
        "finetune.num_workers=0",
        "finetune.checkpoint_every_steps=100",
        "infer.batch_size=64",
        "infer.pool_size=1",
        "infer.cpus_per_actor=0.5",
        "guards.holdout_days=1",
        # The tiny model is random: its free generations name no cluster, so the valid-rate guard
        # would stop every LLM table (tests/integration/infer checks that guard).
        "guards.min_valid_rate=0.0",
        "guards.valid_sample=8",
        "pipeline.drift_min_support=5",
        "pipeline.drift_window_days=4",
    ]


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory, ray_session, tiny_model_dir):
    """A month of simulated log (8 clusters), aggregated: the source every test copies."""
    from jobs import aggregate, simulate

    root = str(tmp_path_factory.mktemp("pipeline_sim") / "root")
    cfg = load_config(None, tiny_overrides(root, str(tiny_model_dir)))
    simulate.run(cfg)
    aggregate.run(cfg)
    return root


@pytest.fixture
def sim_copy(sim_root, tmp_path, tiny_model_dir):
    """(root, overrides): a private copy of the aggregated month for one test."""
    root = str(tmp_path / "root")
    shutil.copytree(sim_root, root)
    # Inputs default to {root}/inputs/..., so a config with root=<copy> reads the copy.
    return root, tiny_overrides(root, str(tiny_model_dir))

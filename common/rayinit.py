"""Start or join Ray the same way in every job: the configured address, else local."""

from __future__ import annotations

import logging
import os

from common.config import Config

log = logging.getLogger(__name__)

RUNTIME_ENV_VARS = {"TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
# Serve's ingress, read by Ray's processes when they start (so set before ray.init / ray start):
# HAProxy on the HTTP port forwarding to each replica's own HTTP port ("direct ingress"),
# instead of Serve's Python proxy, which gave 6x fewer requests/s on 2 cores (docs/benchmarks.md).
# A stopping replica drains at least this long (Ray's default, 30 s, leaves an external load
# balancer time to notice); locally HAProxy is Serve's own and 5 s is plenty (cluster.yaml: 30).
SERVE_INGRESS_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}
PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


# Ray Train V2 logs every `ray.train.report` at INFO (the whole metrics dict, one long line per
# step) to a logger named after its source file; jobs.finetune prints its own step line.
TRAIN_REPORT_LOGGER_FILE = "train/v2/_internal/execution/context.py"


def quiet_ray_train_logs() -> None:
    """Worker setup hook for a local Ray started without its dashboard: Ray Train's placement
    group cleaner polls the State API (served by the dashboard) every second and would warn
    each time that it is unavailable, burying the job's progress. It still cleans up; its
    errors still show. Ray Train's per-step report echo goes too (warnings still show)."""
    import logging

    import ray

    logging.getLogger(PG_CLEANER_LOGGER).setLevel(logging.ERROR)
    report_logger = os.path.join(os.path.dirname(ray.__file__), TRAIN_REPORT_LOGGER_FILE)
    logging.getLogger(report_logger).setLevel(logging.WARNING)


def set_ray_env() -> None:
    """The environment Ray's processes start with (RUNTIME_ENV_VARS, SERVE_INGRESS_ENV), where
    the shell has not set them: before ray.init here, and before the test session's Ray."""
    for key, value in {**RUNTIME_ENV_VARS, **SERVE_INGRESS_ENV}.items():
        os.environ.setdefault(key, value)


def init_ray(cfg: Config):
    """ray.init once; under `ray job submit` (RAY_ADDRESS set) this joins the cluster."""
    import ray

    if ray.is_initialized():
        return ray
    set_ray_env()
    kwargs: dict = {"log_to_driver": True}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:
        if cfg.ray.num_cpus is not None:
            kwargs["num_cpus"] = cfg.ray.num_cpus
        if cfg.ray.object_store_memory is not None:
            kwargs["object_store_memory"] = cfg.ray.object_store_memory
        kwargs["include_dashboard"] = False
        kwargs["runtime_env"] = {"worker_process_setup_hook": quiet_ray_train_logs}
    ray.init(**kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = True
    return ray


def warn_if_gpus_missing(gpus: float, asked_by: str, turn_off: str) -> None:
    """A GPU request no node of the cluster can meet now waits for the autoscaler to add a GPU
    node, and on a machine without one, for ever: say so up front instead of waiting silently."""
    if gpus <= 0:
        return
    import ray

    have = ray.cluster_resources().get("GPU", 0.0)
    if have < gpus:
        log.warning(
            "%s asks for %g GPU(s) per worker and this Ray cluster has %g now: the job waits "
            "until the autoscaler adds a GPU node (on a machine without GPUs, for ever: set %s)",
            asked_by,
            gpus,
            have,
            turn_off,
        )


def placement_group_ids() -> set[str]:
    """The placement groups Ray knows of now (hex ids), to tell which ones a run adds."""
    from ray.util import placement_group_table

    return set(placement_group_table())


def release_placement_groups(before: set[str]) -> int:
    """Remove the live placement groups this driver's job created since `before`; their actors
    stop with them. Ray Train 2.60 leaves a run that failed holding its workers' placement group
    for as long as the driver lives (its cleaner needs the dashboard's State API), so a retry in
    the same process, a notebook or the test session, would wait for ever for those CPUs and
    GPUs. Returns how many were removed."""
    import ray
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    job = ray.get_runtime_context().get_job_id()  # a placement group id ends with its job's id
    removed = 0
    for pg_id, info in placement_group_table().items():
        if pg_id in before or not pg_id.endswith(job) or info["state"] == "REMOVED":
            continue
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        removed += 1
    return removed

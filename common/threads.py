"""How many torch threads a scoring actor or a training worker takes.

Sized in the actor or worker itself, on its own node: on a cluster the driver runs on a small head
node, and the pool's actors (or the trainer's workers) spread over the worker nodes.
"""

from __future__ import annotations

import os


def cpu_cores() -> int:
    """Cores this process may run on (affinity and cgroup CPU sets respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def node_resources() -> dict:
    """Ray's resources of the node this process runs on ({"CPU": 16.0, "GPU": 1.0, ...}); {}
    outside Ray (a GPU box checking the batch function on its own)."""
    try:
        import ray

        if not ray.is_initialized():
            return {}
        me = ray.get_runtime_context().get_node_id()
        return next((n["Resources"] for n in ray.nodes() if n["NodeID"] == me), {})
    except Exception:  # no Ray installed, or a GCS that does not answer: size from the cores
        return {}


def threads_for(
    actors: int, cpus_per_actor: float, gpus_per_actor: float, node: dict, cores: int
) -> int:
    """Torch threads of one actor (or worker): the node's cores shared by the pool's actors that
    can sit on this node. At most `actors` (infer.pool_size, finetune.num_workers), and no more
    than the node's CPUs and GPUs hold: 8 actors of 16 CPUs on 16-CPU nodes are one per node and
    get all 16 cores each; on the 2-core laptop one actor of 1 CPU gets both cores."""
    here = actors
    if node:
        here = min(here, max(1, int(node.get("CPU", cores) // cpus_per_actor)))
        if gpus_per_actor:
            here = min(here, max(1, int(node.get("GPU", 0) // gpus_per_actor)))
    return max(1, cores // here)

"""cluster.yaml passes the Ray cluster launcher's own JSON schema (draft-07, unknown keys fail)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parents[3]
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def load():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_matches_ray_schema():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load()), key=str)
    assert errors == [], [e.message for e in errors]


def test_cluster_shape_cpu_head_cpu_and_gpu_workers():
    cfg = load()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) >= 1]
    cpu = [v for v in workers.values() if "GPU" not in v["resources"]]
    assert gpu and cpu
    for t in gpu + cpu:
        assert t["min_workers"] == 0 and t["max_workers"] >= 1  # autoscaling from zero
    assert gpu[0]["node_config"]["InstanceType"].startswith(("g5.", "g6."))
    commands = " ".join(head_cmd for t in gpu + cpu for head_cmd in t["worker_setup_commands"])
    assert "pip install -q -e ~/next-interest" in commands and "torch" in commands
    assert cfg["provider"]["type"] == "aws"


def test_schema_rejects_a_broken_config():
    """The check has teeth: a fractional resource and an unknown key are both errors."""
    schema = json.loads(SCHEMA.read_text())
    cfg = load()
    cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    cfg["not_a_key"] = 1
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(cfg))
    assert len(errors) == 2

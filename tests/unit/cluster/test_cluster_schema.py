"""cluster.yaml passes the Ray cluster launcher's own checks, and what a working deployment needs
is in it: Ray's images pinned to this Ray and Python, token auth on every node, boto3 on the head
(docs/deploy.md). Offline: Ray's config code and a stubbed EC2 client, no AWS."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

REPO = Path(__file__).resolve().parents[3]
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
TOKEN = "~/.ray/auth_token"
PROJECT = '"$HOME/next-interest'  # how setup names the synced copy (quoted: [extras] is a glob)


def load():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def python_tag():
    """py311 from requires-python ">=3.11": the images carry the oldest Python the project takes."""
    requires = pyproject()["project"]["requires-python"]
    major, minor = re.search(r">=\s*(\d+)\.(\d+)", requires).groups()
    return f"py{major}{minor}"


def images(cfg):
    """Image per node type as Ray's autoscaler resolves it (v2: `ray up`'s default in 2.60)."""
    ac = AutoscalingConfig(copy.deepcopy(cfg), skip_content_hash=True)
    return {t: ac.get_docker_config(t).get("image") for t in cfg["available_node_types"]}


def start_line(commands):
    lines = [c for c in commands if "ray start" in c]
    assert len(lines) == 1, commands
    return lines[0]


def problems(cfg) -> list[str]:
    """Deployment defects that Ray's schema does not see (docs/deploy.md §1)."""
    out = []
    version, py = ray.__version__, python_tag()
    try:
        imgs = images(cfg)
    except Exception as e:  # e.g. head_image without image: Ray 2.60's v2 config raises KeyError
        out.append(f"Ray cannot resolve the images: {e!r}")
        imgs = {}
    head = cfg["head_node_type"]
    for node_type, image in imgs.items():
        gpu = cfg["available_node_types"][node_type]["resources"].get("GPU", 0) > 0
        flavour = r"(gpu|cu12\d)" if gpu else "cpu"
        if not re.fullmatch(rf"rayproject/ray:{re.escape(version)}-{py}-{flavour}", image or ""):
            out.append(f"{node_type}: image {image} is not Ray {version} {py} {flavour}")
    if cfg.get("file_mounts", {}).get(TOKEN) != TOKEN:
        out.append("the token file is not mounted on every node")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        line = start_line(cfg[key])
        before = line[: line.index("ray start")]
        if "RAY_AUTH_MODE=token" not in before:
            out.append(f"{key}: ray start without RAY_AUTH_MODE=token")
        if not line.startswith("ulimit -n 65536;"):
            out.append(f"{key}: no ulimit -n 65536 before ray start")
    merged = prepare_config(copy.deepcopy(cfg))
    node_setups = {head: merged["head_setup_commands"]}
    for node_type, spec in cfg["available_node_types"].items():
        if node_type != head:  # a type's own list replaces the global one
            node_setups[node_type] = spec.get(
                "worker_setup_commands", merged["worker_setup_commands"])
    for node_type, commands in node_setups.items():
        installs = [c for c in commands if f"pip install -q -e {PROJECT}" in c]
        torch = [i for i, c in enumerate(commands) if "pip install -q torch==" in c]
        if len(installs) != 1 or not torch or torch[0] > commands.index(installs[0]):
            out.append(f"{node_type}: not torch first, then the project from {PROJECT}\"")
        for c in commands:
            if "|| true" in c:
                out.append(f"{node_type}: a setup failure is hidden: {c}")
            if re.search(r"\bpython3\b", c):
                out.append(f"{node_type}: python3 where the image's `python` is meant: {c}")
    head_install = " ".join(c for c in node_setups[head] if f"-e {PROJECT}" in c)
    if f"-e {PROJECT}[cluster]" not in head_install:
        out.append("head: the project is not installed with its cluster extra (boto3)")
    if any(re.search(r"pip install\b.*\bboto3\b", c) for c in node_setups[head]):
        out.append("head: boto3 installed on its own, outside the project's resolve")
    excludes = cfg.get("rsync_exclude", [])
    for name in ("data", "reports"):
        if name in excludes or f"/{name}" not in excludes:
            out.append(f"rsync_exclude: {name} must be anchored as /{name}")
    return out


def test_cluster_yaml_passes_ray_schema_and_config_checks():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load()), key=str)
    assert errors == [], [e.message for e in errors]
    validate_config(prepare_config(load()))  # what `ray up` runs (defaults merged, docker checked)


def test_cluster_yaml_has_what_a_deployment_needs():
    assert problems(load()) == []


def _set(path, value):
    def mutate(cfg):
        *parents, last = path
        node = cfg
        for key in parents:
            node = node[key]
        node[last] = value
    return mutate


def _edit_start(key, old, new):
    def mutate(cfg):
        cfg[key] = [c.replace(old, new) for c in cfg[key]]
    return mutate


def _edit_head_setup(old, new):
    def mutate(cfg):
        cfg["head_setup_commands"] = [c.replace(old, new) for c in cfg["head_setup_commands"]]
    return mutate


def _head_image_only(cfg):
    image = cfg["docker"].pop("image")
    cfg["docker"]["head_image"] = cfg["docker"]["worker_image"] = image


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_set(["docker", "image"], "rayproject/ray:2.59.0-py311-cpu"), "head: image"),
        (_set(["docker", "image"], "rayproject/ray:2.60.0-py310-cpu"), "cpu_worker: image"),
        (_set(["available_node_types", "gpu_worker", "docker", "worker_image"],
              "rayproject/ray:2.60.0-py311-cpu"), "gpu_worker: image"),
        (_head_image_only, "Ray cannot resolve the images"),
        (lambda cfg: cfg["file_mounts"].pop(TOKEN), "token file"),
        (_edit_start("worker_start_ray_commands", "RAY_AUTH_MODE=token ", ""),
         "worker_start_ray_commands: ray start without RAY_AUTH_MODE"),
        (_edit_start("head_start_ray_commands", "ulimit -n 65536; ", ""),
         "head_start_ray_commands: no ulimit"),
        (_edit_head_setup("[cluster]", ""), "cluster extra"),
        (lambda cfg: cfg["head_setup_commands"].append("python -m pip install boto3"),
         "boto3 installed on its own"),
        (_edit_head_setup("--prepare", "--prepare || true"), "hidden"),
        (_edit_head_setup("python -m pip install -q torch", "python3 -m pip install -q torch"),
         "python3"),
        (_set(["rsync_exclude"], ["data", "reports"]), "anchored as /data"),
    ],
)
def test_checks_catch_each_defect(mutate, expected):
    """The checks have teeth: each known defect, put back into the real file, is reported."""
    cfg = load()
    mutate(cfg)
    found = problems(cfg)
    assert any(expected in p for p in found), found


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
    # The CPU build of torch on CPU nodes, the CUDA (default PyPI) build on GPU nodes.
    assert all("download.pytorch.org/whl/cpu" in " ".join(t["worker_setup_commands"]) for t in cpu)
    assert not any("whl/cpu" in c for t in gpu for c in t["worker_setup_commands"])
    assert cfg["provider"]["type"] == "aws"


def test_pyproject_declares_the_cluster_extra_and_jinja2():
    project = pyproject()["project"]
    assert project["optional-dependencies"]["cluster"] == ["boto3"]
    assert any(re.match(r"jinja2\b", d) for d in project["dependencies"])


def test_every_node_type_names_its_host_ami_and_ray_keeps_it():
    """Without an ImageId Ray fills in its Ubuntu 18.04 DLAMI (Python 3.6, glibc 2.27)."""
    pytest.importorskip("boto3")
    from ray.autoscaler._private.aws.config import _check_ami

    cfg = load()
    wanted = {t: v["node_config"].get("ImageId") for t, v in cfg["available_node_types"].items()}
    assert all(wanted.values()), wanted
    _check_ami(cfg)
    kept = {t: v["node_config"]["ImageId"] for t, v in cfg["available_node_types"].items()}
    assert kept == wanted


def test_run_instances_receives_the_image_id_verbatim(monkeypatch):
    """`resolve:ssm:...` works only if Ray hands it to EC2 RunInstances untouched; the stubbed
    client also checks the request against botocore's EC2 model."""
    pytest.importorskip("boto3")
    from botocore.stub import ANY, Stubber
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    for var, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(var, value)
    cfg = load()
    node_config = copy.deepcopy(cfg["available_node_types"]["gpu_worker"]["node_config"])
    node_config.update(SubnetIds=["subnet-1"], SecurityGroupIds=["sg-1"], KeyName="key")
    provider = AWSNodeProvider(cfg["provider"], cfg["cluster_name"])
    expected = {"ImageId": node_config["ImageId"], "InstanceType": "g6.2xlarge",
                "MinCount": 1, "MaxCount": 1, "SubnetId": "subnet-1", "SecurityGroupIds": ["sg-1"],
                "KeyName": "key", "BlockDeviceMappings": ANY, "IamInstanceProfile": ANY,
                "TagSpecifications": ANY}
    response = {"Instances": [{"InstanceId": "i-0123456789abcdef0",
                               "State": {"Code": 0, "Name": "pending"},
                               "StateReason": {"Code": "pending", "Message": "pending"}}]}
    with Stubber(provider.ec2_fail_fast.meta.client) as stub:
        stub.add_response("run_instances", response, expected)
        created = provider._create_node(
            node_config, {"ray-node-type": "worker", "ray-launch-config": "h"}, 1)
        stub.assert_no_pending_responses()
    assert list(created) == ["i-0123456789abcdef0"]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")
def test_rsync_excludes_copy_examples_data(tmp_path):
    """The excludes as Ray passes them to rsync: top-level data/ stays, examples/data/ travels."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    src, dst = tmp_path / "repo", tmp_path / "node"
    for rel in ("data/x", "reports/x", ".venv/lib/x", "pkg/__pycache__/x", "examples/data/x",
                "docs/reports/x", "jobs/a.py"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    excludes = {"rsync_exclude": load()["rsync_exclude"]}
    args = SSHCommandRunner._create_rsync_filter_args(None, excludes)
    subprocess.run(["rsync", "-a", *args, f"{src}/", f"{dst}/"], check=True)
    copied = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert copied == ["docs/reports/x", "examples/data/x", "jobs/a.py"]


def test_tick_script_submits_one_tick_from_the_head(tmp_path):
    """deploy/tick.sh under cron's bare environment: absolute paths, one `ray exec` command."""
    fake = tmp_path / "ray"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NEXT_INTEREST_RAY": str(fake)}
    run = subprocess.run([str(REPO / "deploy" / "tick.sh"), "2026-05-02"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    args = run.stdout.splitlines()[1:]
    assert args[:2] == ["exec", "cluster.yaml"]
    assert args[2] == ("cd ~/next-interest && ray job submit --address http://127.0.0.1:8265 "
                       "--working-dir . -- python -m jobs.pipeline tick --as-of 2026-05-02 "
                       "--config prod.yaml")
    bad = subprocess.run([str(REPO / "deploy" / "tick.sh"), "2026-05-02; rm -rf ~"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert os.access(REPO / "deploy" / "tick.sh", os.X_OK)


def test_schema_rejects_a_broken_config():
    """The schema check has teeth: a fractional resource and an unknown key are both errors."""
    schema = json.loads(SCHEMA.read_text())
    cfg = load()
    cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    cfg["not_a_key"] = 1
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(cfg))
    assert len(errors) == 2

"""serve/config.yaml is a valid `serve deploy` config for this app (ServeDeploySchema)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from serve.app import AppArgs, NextInterest

CONFIG = Path(__file__).parents[3] / "serve" / "config.yaml"


def test_config_validates_and_matches_the_app():
    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (app,) = config.applications
    assert app.import_path == "serve.app:build_app"
    assert AppArgs.model_validate(app.args).root == "s3://BUCKET/PREFIX"
    (deployment,) = app.deployments
    assert deployment.name == NextInterest.name
    # ServeDeploySchema keeps autoscaling_config as a plain dict; Ray's own AutoscalingConfig is
    # what `serve deploy` checks it with (min <= initial <= max replicas, and more), and it
    # rejects a bad shape of this very file.
    raw = deployment.autoscaling_config
    scaling = AutoscalingConfig.model_validate(raw)
    with pytest.raises(ValidationError, match="initial_replicas"):
        AutoscalingConfig.model_validate({**raw, "initial_replicas": raw["max_replicas"] + 1})
    # Ours on top: never scale to zero (a first request would wait for a replica to load the
    # table), and a replica takes more requests than the autoscaler aims at.
    assert scaling.min_replicas >= 1
    assert scaling.target_ongoing_requests < deployment.max_ongoing_requests
    # user_config is applied by reconfigure() on top of the args: it must be AppArgs fields.
    AppArgs.model_validate({**app.args, **deployment.user_config})


def test_config_agrees_with_what_serve_build_writes():
    """Regenerate the deployment part as `serve build` does (its own calls, no cluster) and check
    the edited file kept every option it writes."""
    from ray.serve._private.build_app import build_app as build_serve_app
    from ray.serve.deployment import deployment_to_schema

    from serve.app import build_app

    built = build_serve_app(build_app(AppArgs(root="s3://BUCKET/PREFIX")), name="next-interest")
    (generated,) = [
        deployment_to_schema(d).model_dump(exclude_unset=True) for d in built.deployments
    ]
    (written,) = yaml.safe_load(CONFIG.read_text())["applications"][0]["deployments"]
    assert generated == {k: written[k] for k in generated}

"""common.model for the actors that score: the GPU dtype and a conversion several actors run at
once (no GPU and no GGUF needed: the expensive parts are replaced)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from common import model as model_mod


def test_bf16_only_where_the_gpu_has_it_in_hardware(monkeypatch):
    """torch counts emulated bf16 as supported (a V100 or a T4): those GPUs get fp32."""
    asked = []

    def emulated_only(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulated_only)
    assert model_mod.pick_dtype("auto", "cuda") == torch.float32
    assert asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert model_mod.pick_dtype("auto", "cuda:0") == torch.bfloat16


class Saved:
    """Stands in for a model or tokenizer: save_pretrained writes one named file."""

    def __init__(self, name: str):
        self.name = name

    def save_pretrained(self, path):
        with open(os.path.join(path, self.name), "w") as f:
            f.write("new")


def complete(target: str, content: str = "theirs") -> None:
    """A converted directory as another actor leaves it (marker last)."""
    os.makedirs(target)
    with open(os.path.join(target, "model.safetensors"), "w") as f:
        f.write(content)
    with open(os.path.join(target, model_mod.MARKER), "w") as f:
        json.dump({"source": content}, f)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture
def fake_load(monkeypatch):
    """load_gguf replaced; `hooks` run in it, i.e. while this conversion is under way."""
    hooks = []

    def load(gguf_path):
        for hook in hooks:
            hook()
        return Saved("model.safetensors"), Saved("tokenizer.json")

    monkeypatch.setattr(model_mod, "load_gguf", load)
    return hooks


def test_a_complete_target_is_never_deleted(tmp_path, fake_load):
    target = str(tmp_path / "smollm2")
    complete(target)
    assert model_mod.convert_gguf("x.gguf", target) == target
    assert read(os.path.join(target, "model.safetensors")) == "theirs"
    assert sorted(os.listdir(tmp_path)) == ["smollm2"]


def test_a_target_completed_meanwhile_wins_and_ours_is_discarded(tmp_path, fake_load):
    target = str(tmp_path / "smollm2")
    fake_load.append(lambda: complete(target))  # another actor finishes first
    assert model_mod.convert_gguf("x.gguf", target) == target
    assert read(os.path.join(target, "model.safetensors")) == "theirs"
    assert sorted(os.listdir(tmp_path)) == ["smollm2"]  # no temporary dir left behind


def test_a_half_written_target_is_replaced(tmp_path, fake_load):
    target = tmp_path / "smollm2"
    target.mkdir()
    (target / "model.safetensors").write_text("truncated")  # no marker: a crashed attempt
    model_mod.convert_gguf("x.gguf", str(target), source="wheel:member")
    assert model_mod.is_converted(str(target))
    assert (target / "model.safetensors").read_text() == "new"
    assert json.loads((target / model_mod.MARKER).read_text())["source"] == "wheel:member"
    assert sorted(os.listdir(tmp_path)) == ["smollm2"]

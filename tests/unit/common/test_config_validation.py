"""Config values that cannot be meant are one-line ConfigErrors before any job runs; text keys
take what was written; `{root}` works in every path key (docs: common/config.py)."""

from __future__ import annotations

import pytest

from common import storage, taxonomy
from common.config import ConfigError, load_config


def _error(overrides: list[str], path=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    message = str(e.value)
    assert "\n" not in message
    return message


# ---- empty paths: an unset shell variable must not point a job at `/` or the cwd ---------------
@pytest.mark.parametrize(
    "key",
    ["root", "inputs.interactions", "inputs.items", "inputs.clusters", "model.cache_dir",
     "model.name_or_path", "infer.adapter", "pipeline.work_root", "ingest.source"],
)
@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_path_is_an_error(key, value):
    assert f"{key}: is empty" in _error([f"{key}={value}"])


def test_optional_paths_still_take_null_for_the_default():
    cfg = load_config(None, ["infer.adapter=null", "pipeline.work_root=~", "ingest.source=null"])
    assert (cfg.infer.adapter, cfg.pipeline.work_root, cfg.ingest.source) == (None, None, None)


def test_an_empty_root_in_a_file_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("root: ''\n")
    assert "root: is empty" in _error([], path)


def test_join_refuses_an_empty_root():
    """`join("", "x")` was "/x": a write into the filesystem root, while the replace guard
    looked at the cwd (local_path(""))."""
    with pytest.raises(ConfigError, match="empty"):
        storage.join("", "day=2026-01-01", "part-0.parquet")
    with pytest.raises(ConfigError, match="empty"):
        storage.report_dir("", "default")
    assert storage.join("/", "x") == "/x"  # the root itself is a path, not an empty one


# ---- impossible dates -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "key"),
    [("as_of=2026-02-30", "as_of"), ("simulate.start_date=2026-13-01", "simulate.start_date"),
     ("pipeline.start=2026-04-31", "pipeline.start")],
)
def test_an_impossible_date_override_names_its_key(override, key):
    assert f"{key}: Input should be a valid date" in _error([override])


def test_an_impossible_date_in_a_file_names_its_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("as_of: 2026-02-30\nsimulate:\n  start_date: 2026-13-01\n")
    message = _error([], path)
    assert "as_of: Input should be a valid date" in message
    assert "simulate.start_date: Input should be a valid date" in message


# ---- simulate bounds --------------------------------------------------------------------------
def test_n_clusters_is_bounded_by_the_taxonomy():
    size = len(taxonomy.all_clusters())
    assert load_config(None, [f"simulate.n_clusters={size}"]).simulate.n_clusters == size
    assert f"less than or equal to {size}" in _error([f"simulate.n_clusters={size + 1}"])


def test_help_says_the_most_clusters():
    from common.cli import keys_help

    assert f"8 to {len(taxonomy.all_clusters())}" in keys_help("simulate")


def test_a_negative_seed_is_an_error():
    assert "simulate.seed" in _error(["simulate.seed=-1"])


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        (["simulate.start_date=1970-01-01", "simulate.days=1"], True),
        (["simulate.start_date=1969-12-31", "simulate.days=5"], False),
        (["simulate.start_date=2099-12-31", "simulate.days=1"], True),  # last day 2099-12-31
        (["simulate.start_date=2099-12-31", "simulate.days=2"], False),
        (["simulate.start_date=2099-10-01"], False),  # 120 days by default
        (["simulate.days=999999999999"], False),  # no OverflowError
    ],
)
def test_the_simulated_log_lies_within_the_valid_timestamps(overrides, ok):
    if ok:
        load_config(None, overrides)
    else:
        assert "which the aggregation drops as bad timestamps" in _error(overrides)


# ---- hit-rate cut-offs, Ray and shuffle sizes -------------------------------------------------
@pytest.mark.parametrize("section", ["evaluate", "pipeline"])
@pytest.mark.parametrize("value", ["[]", "[0]", "[-1,5]"])
def test_ks_are_positive_and_not_empty(section, value):
    assert f"{section}.ks" in _error([f"{section}.ks={value}"])


@pytest.mark.parametrize(
    "key", ["ray.num_cpus", "ray.object_store_memory", "aggregate.num_partitions"]
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_sizes_are_at_least_one(key, value):
    assert key in _error([f"{key}={value}"])


def test_sizes_left_unset_stay_auto():
    cfg = load_config(None, ["aggregate.num_partitions=null", "ray.num_cpus=2"])
    assert cfg.aggregate.num_partitions is None
    assert cfg.ray.num_cpus == 2


# ---- {root} in every path key -----------------------------------------------------------------
def test_root_expands_in_every_path_key():
    cfg = load_config(None, [
        "root=/tmp/r", "pipeline.work_root={root}/w", "infer.adapter={root}/adapters/x",
        "ingest.source={root}/src", "model.cache_dir={root}/cache",
        "model.name_or_path={root}/models/m",
    ])
    assert cfg.pipeline.work_root == "/tmp/r/w"
    assert cfg.infer.adapter == "/tmp/r/adapters/x"
    assert cfg.ingest.source == "/tmp/r/src"
    assert cfg.model.cache_dir == "/tmp/r/cache"
    assert cfg.model.name_or_path == "/tmp/r/models/m"


def test_a_printed_config_keeps_root_templates(tmp_path, capsys):
    """A file saved from `python -m common.config` moves every `{root}` path with its root."""
    from common.config import main

    main(["--set", "root=/tmp/first", "--set", "pipeline.work_root={root}/w",
          "--set", "infer.adapter=/abs/adapter"])
    path = tmp_path / "mine.yaml"
    path.write_text(capsys.readouterr().out)
    cfg = load_config(str(path), ["root=/tmp/second"])
    assert cfg.pipeline.work_root == "/tmp/second/w"
    assert cfg.inputs.items == "/tmp/second/inputs/items.parquet"
    assert cfg.infer.adapter == "/abs/adapter"
    assert load_config(str(path)).model_dump() == load_config(
        None, ["root=/tmp/first", "pipeline.work_root={root}/w", "infer.adapter=/abs/adapter"]
    ).model_dump()


# ---- text keys take the text written ----------------------------------------------------------
@pytest.mark.parametrize("value", ["2026", "2026-03-01", "on", "1.50", "#1"])
def test_a_text_key_takes_the_text_written(value):
    assert load_config(None, [f"report={value}"]).report == value


def test_text_keys_in_a_file_and_in_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("report: 2026-03-01\nevaluate:\n  versions: [20260101, v2]\n")
    cfg = load_config(path)
    assert cfg.report == "2026-03-01"
    assert cfg.evaluate.versions == ["20260101", "v2"]
    assert load_config(None, ["evaluate.versions=[20260101, true]"]).evaluate.versions == [
        "20260101", "true"
    ]
    assert load_config(None, ["root=/r", "inputs.items={root}"]).inputs.items == "/r"


def test_other_keys_keep_their_type_errors(tmp_path):
    assert "simulate.n_users" in _error(["simulate.n_users=2026-01-01"])
    assert "prompt.rag" in _error(["prompt.rag=maybe"])
    path = tmp_path / "c.yaml"
    path.write_text("inputs:\n  items: {root}\n")  # a YAML mapping in a file: say to quote it
    assert "quote it" in _error([], path)


# ---- report names, empty sections, help texts -------------------------------------------------
@pytest.mark.parametrize("value", ["", " ", ".", "..", "../../x", "a/b", "a\\b"])
def test_report_is_one_folder_name(value):
    assert "is not a report name" in _error([f"report={value}"])


def test_report_names_that_are_fine():
    for value in ("default", "replay-q2", "exp_1.v2", "2026-03-01"):
        assert load_config(None, [f"report={value}"]).report == value


def test_an_empty_section_means_its_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("simulate:\n  # n_users: 3\ninputs:\n")
    cfg = load_config(path)
    assert cfg.simulate.n_users == load_config().simulate.n_users
    assert load_config(path, ["simulate.n_users=3"]).simulate.n_users == 3


def test_n_events_is_described_as_approximate():
    from common.config import SimulateConfig

    assert "Poisson" in SimulateConfig.model_fields["n_events"].description


def test_keys_help_can_list_single_top_level_keys():
    from common.cli import keys_help

    text = keys_help("root", "simulate")
    assert "  root = data:" in text
    assert "report" not in text and "as_of" not in text
    assert "  simulate.n_users = " in text
    assert "report = default" in keys_help("")  # "" still lists every top-level key


@pytest.mark.parametrize("value", ["on", "off", "auto"])
def test_a_choice_of_words_takes_the_word_written(value):
    """YAML reads on/off as booleans; finetune.bf16 is a choice of the words."""
    assert load_config(None, [f"finetune.bf16={value}"]).finetune.bf16 == value


def test_a_key_that_is_not_text_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("simulate:\n  1: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'simulate.1'"):
        load_config(path)

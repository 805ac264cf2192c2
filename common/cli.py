"""The command line every job shares: `--config FILE`, repeatable `--set key=value`, one JSON
line out."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from pydantic import BaseModel

from common.config import Config, ConfigError, load_config


def job_parser(prog: str, description: str, reads: str, writes: str) -> argparse.ArgumentParser:
    """A parser whose --help says what the job reads and writes."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"Reads: {reads}\nWrites: {writes}\n\n"
        "Without --config the embedded defaults apply (local Ray, storage under ./data, the "
        "packaged small model). Every key of the config can be set with --set, e.g. "
        "--set root=s3://bucket/prefix --set infer.batch_size=32. Every key with its value: "
        "python -m common.config (the same --config/--set apply).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    return parser


def add_config_args(parser, config_dest: str = "config", set_dest: str = "overrides") -> None:
    """--config FILE and repeatable --set KEY=VALUE (also on a subcommand, to other dests)."""
    parser.add_argument("--config", dest=config_dest, metavar="FILE", help="YAML config file.")
    parser.add_argument(
        "--set",
        dest=set_dest,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one config key (repeatable), e.g. --set root=/tmp/run.",
    )


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOGLEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.exit(f"error: {e}")


def run_main(
    parser: argparse.ArgumentParser,
    run: Callable[[Config], dict],
    argv: list[str] | None = None,
) -> dict:
    """Parse, load the config, run, and print the summary as one JSON line.

    Errors the user can fix (bad config, bad input) exit with a one-line message, no traceback.
    """
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    try:
        summary = run(cfg)
    except (ConfigError, InputError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(summary, default=str, sort_keys=True))
    return summary


class InputError(ValueError):
    """Input data that cannot be used (missing columns, empty files); the message says which."""


def keys_help(*sections: str) -> str:
    """The keys of config sections, with defaults and descriptions, for a job's --help epilog.

    "" stands for every top-level key (root, report, as_of); a top-level key's own name lists
    only it (`keys_help("root", "simulate")` for a job that reads no report or as_of)."""
    lines = []
    top = Config()
    for name in sections:
        single = name in Config.model_fields and not isinstance(getattr(top, name), BaseModel)
        model = Config if not name or single else type(getattr(top, name))
        for key, field in model.model_fields.items():
            if single and key != name:
                continue
            if not name and isinstance(getattr(top, key), BaseModel):
                continue
            full = f"{name}.{key}" if name and not single else key
            default = field.get_default(call_default_factory=True)
            lines.append(f"  {full} = {default}: {field.description or ''}")
    return "\n".join(lines)

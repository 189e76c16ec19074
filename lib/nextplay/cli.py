"""`nextplay <stage>`: one subcommand per stage. `jobs/<stage>.py` and the Databricks wheel tasks
call `main` with the same arguments, so every launcher runs the same code path.

Exit codes: 0 done, 2 bad configuration or arguments, 1 a failed stage.

Start-up: a person runs `nextplay --help`, a typo or a missing file many times a day, and each must
answer at once. So this module imports only the standard library and the config (plain dataclasses
and YAML); Spark, torch and MLflow are imported inside the stage function that needs them, after the
arguments and the config have been checked (tests/test_cli.py keeps it so).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, NoReturn, Sequence

from nextplay import runtime
from nextplay.config import Config, ConfigError, load_config
from nextplay.logs import configure_logging
from nextplay.progress import on_terminal

log = logging.getLogger("nextplay")


class UsageError(Exception):
    """A command line argparse refused; its usage and message are already on stderr."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """argparse's own report (the usage line, then `prog: error: message`), returned as exit code 2
        by `main` rather than by SystemExit, so callers of `main` get a code back."""
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise UsageError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", help="YAML config file, or the name of a conf shipped in the package, e.g. databricks "
                                   "(default: conf/local.yml when present)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--lake", help="lake root folder or URI (sets lake.root)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (sets tracking.uri)")
    p.add_argument("-v", "--verbose", action="store_true")


def _spark(cfg: Config):
    from nextplay.spark import get_spark  # deferred: Spark, torch or MLflow load only when a stage runs

    return get_spark(cfg)


def _stage_generate(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.data.generate import generate  # deferred: Spark, torch or MLflow load only when a stage runs

    return generate(_spark(cfg), cfg)


def _stage_ingest(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.data.ingest import ingest  # deferred: Spark, torch or MLflow load only when a stage runs

    return ingest(_spark(cfg), cfg)


def _stage_sessionize(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.data.sessionize import sessionize  # deferred: Spark, torch or MLflow load only when a stage runs

    return sessionize(_spark(cfg), cfg, full=args.full)


def _stage_train(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.train.launch import train  # deferred: Spark, torch or MLflow load only when a stage runs

    return train(cfg)


def _stage_evaluate(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.evaluate.evaluate import evaluate  # deferred: Spark, torch or MLflow load only when a stage runs

    return evaluate(cfg, run_id=args.run_id)


def _stage_score(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.score.batch import score  # deferred: Spark, torch or MLflow load only when a stage runs

    return score(cfg)


def _stage_pipeline(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.pipeline import run_pipeline, summary  # deferred: Spark, torch or MLflow load only when a stage runs

    result = run_pipeline(cfg, next_day=getattr(args, "next_day", False))
    print(summary(result))
    return None


def _stage_benchmark(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.benchmark import benchmark  # deferred: Spark, torch or MLflow load only when a stage runs

    return benchmark(cfg, train_path=args.train, test_path=args.test, out_path=args.out)


def _stage_maintain(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.maintain import maintain  # deferred: Spark, torch or MLflow load only when a stage runs

    return maintain(cfg)


def _stage_sql(cfg: Config, args: argparse.Namespace) -> object:
    from nextplay.sql import run_sql  # deferred: Spark, torch or MLflow load only when a stage runs

    run_sql(cfg, args.query, fmt=args.format, limit=args.limit)
    return None


STAGES: dict[str, tuple[str, Callable[[Config, argparse.Namespace], object]]] = {
    "generate": ("write synthetic play events (Spark) to generate.output", _stage_generate),
    "ingest": ("parse raw plays into plays_bronze / plays_silver / plays_quarantine", _stage_ingest),
    "sessionize": ("update item_index and the sessions of the days new plays touched", _stage_sessionize),
    "train": ("train the RNN on the sessions table and log it to MLflow", _stage_train),
    "evaluate": ("rank the test split against all items, beside the baselines", _stage_evaluate),
    "score": ("write the top-K next tracks per active user to predictions", _stage_score),
    "pipeline": ("generate -> ingest -> sessionize -> train -> evaluate -> score", _stage_pipeline),
    "benchmark": ("train and evaluate on the session-benchmark text format", _stage_benchmark),
    "maintain": ("OPTIMIZE and VACUUM every table, with maintenance.retention_hours of history kept", _stage_maintain),
    "sql": ("run one read-only SQL query over the lake's tables (anything else is refused)", _stage_sql),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nextplay", description="Predict the next track a listener will play.")
    parser.add_argument("--version", action="version", version=f"nextplay {runtime.release()}")
    sub = parser.add_subparsers(dest="stage", required=True, parser_class=_Parser)
    for name, (help_text, _) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if name == "ingest":
            p.add_argument("--input", help="file, folder or glob of raw play events (sets ingest.input)")
            p.add_argument("--format", help="input format (sets ingest.format)")
            p.add_argument("--batch-id", help="batch id (sets ingest.batch_id)")
        if name == "sessionize":
            p.add_argument("--full", action="store_true",
                           help="re-cut every day, not only those new batches touched (the dictionary stays append-only)")
        if name in ("train", "pipeline"):
            p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
            p.add_argument("--warm-start", nargs="?", const="champion", metavar="MODEL_URI",
                           help="start from the champion's weights (or MODEL_URI's), with rows for tracks added since "
                                "(sets train.warm_start)")
        if name == "train":
            p.add_argument("--daily", action="store_true",
                           help="the nightly increment: warm start from the champion, train.daily.epochs over the newest "
                                "train.daily.window_days (sets train.mode=daily)")
        if name == "pipeline":
            p.add_argument("--next-day", action="store_true",
                           help="then play one more generated day: ingest, sessionize incrementally, train daily from "
                                "the champion, evaluate, score")
        if name == "evaluate":
            p.add_argument("--run-id", help="MLflow run to evaluate (default: the latest training run)")
        if name == "score":
            p.add_argument("--model-uri", help="MLflow model URI (sets score.model_uri)")
        if name == "benchmark":
            p.add_argument("--train", required=True, help="train_sessions.txt")
            p.add_argument("--test", required=True, help="test_prefix_label.tsv")
            p.add_argument("--out", default="metrics.json", help="where to write the metrics JSON")
        if name == "sql":
            p.add_argument("query", help="a SELECT; every lake table is registered under its bare name")
            p.add_argument("--format", choices=["table", "json"], default="table")
            p.add_argument("--limit", type=int, default=1000, help="rows to print at most (table format)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    shortcuts = {
        "lake": "lake.root", "mlflow_uri": "tracking.uri", "input": "ingest.input",
        "batch_id": "ingest.batch_id", "model_uri": "score.model_uri",
    }
    if args.stage == "ingest":
        shortcuts["format"] = "ingest.format"
    for attr, key in shortcuts.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "resume", False):
        overrides.append("train.resume=true")
    if getattr(args, "daily", False):
        overrides.append("train.mode=daily")
    if getattr(args, "warm_start", None) is not None:
        overrides.append(f"train.warm_start={args.warm_start}")
    return load_config(args.conf, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        cfg = config_from_args(args)
    except UsageError:
        return 2
    except ConfigError as e:
        print(f"nextplay: error: {e}", file=sys.stderr)
        return 2
    try:
        runtime.check()  # before any stage imports Spark or MLflow (nextplay/runtime.py)
    except runtime.UnsupportedRuntime as e:
        print(f"nextplay: error: {e}", file=sys.stderr)
        return 2
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    if not on_terminal():  # MLflow's download bars, like ours, only where they redraw in place
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _, fn = STAGES[args.stage]
    try:
        result = fn(cfg, args)
    except ConfigError as e:
        print(f"nextplay: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        # Missing inputs and empty tables are user errors: say so plainly, no traceback.
        log.debug("stage failed", exc_info=True)
        print(f"nextplay {args.stage}: {e}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Building a `Config`: the dataclass defaults, then a YAML file (`conf/local.yml` unless `--conf` names
another file, or a conf shipped inside the package such as `databricks`), then `--set dotted.key=value`
overrides. Every layer is validated the same way, so a typo fails fast with one line naming the key
and what is allowed (the CLI turns `ConfigError` into exit code 2).
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
import typing
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence, get_args, get_origin

import yaml

from nextplay.config.sections import (Config, ConfigError, MaintenanceConfig, ModelConfig, SessionizeConfig,
                                      DELTA_SAFE_RETENTION_HOURS)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


DEFAULT_CONF = Path("conf/local.yml")
# Confs shipped inside the package (so inside the wheel, where no conf/ folder exists): `--conf NAME`
# names nextplay/conf/NAME.yml when no file called NAME exists where the command runs.
PACKAGED_CONF_DIR = "conf"


def packaged_confs() -> dict[str, Traversable]:
    """The confs shipped inside the package, by short name (`databricks` for conf/databricks.yml)."""
    folder = importlib.resources.files("nextplay").joinpath(PACKAGED_CONF_DIR)
    if not folder.is_dir():
        return {}
    return {f.name[:-len(".yml")]: f for f in folder.iterdir() if f.name.endswith(".yml") and f.is_file()}


def resolve_conf(path: str | os.PathLike) -> Path | Traversable:
    """What `--conf` names: a path that exists, else a packaged conf's short name; one line if neither.

    The path wins so that a local file can always shadow a packaged conf; a folder is returned as
    is and refused by `load_config` with its own message.
    """
    p = Path(path)
    if p.exists():
        return p
    shipped = packaged_confs()
    if str(path) in shipped:
        return shipped[str(path)]
    names = ", ".join(sorted(shipped)) or "none"
    raise ConfigError(f"--conf {p}: file not found, nor a conf shipped in the package ({names})")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and, for strings from --set, convert) one value against its declared type."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, str):
                value = value.replace("_", "")
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _apply(obj: Any, values: Mapping[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'; allowed under '{prefix.rstrip('.') or 'top level'}': {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted}: expected a section (mapping), got {value!r}")
            _apply(current, value, dotted + ".")
        else:
            setattr(obj, key, _coerce(dotted, value, hints[key]))


def _check_ranges(cfg: Config) -> None:
    """Cross-field and range rules that types cannot express."""
    positive = {
        "generate.events": cfg.generate.events, "generate.users": cfg.generate.users,
        "generate.tracks": cfg.generate.tracks, "generate.days": cfg.generate.days,
        "generate.files": cfg.generate.files, "sessionize.session_gap_minutes": cfg.sessionize.session_gap_minutes,
        "sessionize.min_item_count": cfg.sessionize.min_item_count,
        "sessionize.max_session_length": cfg.sessionize.max_session_length,
        "model.hidden_size": cfg.model.hidden_size, "model.recurrent.num_layers": cfg.model.recurrent.num_layers,
        "model.sasrec.blocks": cfg.model.sasrec.blocks, "model.sasrec.heads": cfg.model.sasrec.heads,
        "model.sasrec.max_positions": cfg.model.sasrec.max_positions,
        "model.n_negatives": cfg.model.n_negatives, "model.hybrid.knn_sessions": cfg.model.hybrid.knn_sessions,
        "train.num_proc": cfg.train.num_proc,
        "train.epochs": cfg.train.epochs, "train.batch_size": cfg.train.batch_size,
        "train.max_len": cfg.train.max_len, "score.top_k": cfg.score.top_k,
        "train.daily.window_days": cfg.train.daily.window_days, "train.daily.epochs": cfg.train.daily.epochs,
        **({"train.window_days": cfg.train.window_days} if cfg.train.window_days is not None else {}),
        **({"train.reader_workers": cfg.train.reader_workers} if cfg.train.reader_workers is not None else {}),
        "score.history_length": cfg.score.history_length, "score.batch_size": cfg.score.batch_size,
        "score.chunk_size": cfg.score.chunk_size, "score.lookback_days": cfg.score.lookback_days,
        "spark.shuffle_partitions": cfg.spark.shuffle_partitions,
        "generate.artists": cfg.generate.artists, "ingest.max_id_length": cfg.ingest.max_id_length,
        "ingest.commit_attempts": cfg.ingest.commit_attempts,
        **({"lake.webhdfs_port": cfg.lake.webhdfs_port} if cfg.lake.webhdfs_port is not None else {}),
        "model.hybrid.knn_neighbors": cfg.model.hybrid.knn_neighbors, "model.hybrid.knn_sample": cfg.model.hybrid.knn_sample,
        "ann.min_items": cfg.ann.min_items, "ann.m": cfg.ann.m, "ann.ef_construction": cfg.ann.ef_construction,
        "ann.candidates": cfg.ann.candidates, "ann.ef_search": cfg.ann.ef_search,
    }
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key}: must be a positive number, got {v}")
    if cfg.ann.ef_search < cfg.ann.candidates:
        raise ConfigError(f"ann.ef_search: must be at least ann.candidates ({cfg.ann.candidates}): the search keeps "
                          f"ef_search items to return candidates of them, got {cfg.ann.ef_search}")
    for key, v in {"model.dropout": cfg.model.dropout, "model.embedding_dropout": cfg.model.embedding_dropout,
                   "generate.malformed_fraction": cfg.generate.malformed_fraction,
                   "train.valid_fraction": cfg.train.valid_fraction, "train.momentum": cfg.train.momentum}.items():
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{key}: must be in [0, 1), got {v}")
    for key, v in {"train.lr": cfg.train.lr, "train.clip_norm": cfg.train.clip_norm}.items():
        if v <= 0:
            raise ConfigError(f"{key}: must be > 0, got {v}")
    _check_model(cfg.model)
    if cfg.train.bptt_steps not in (0, 1):
        raise ConfigError(f"train.bptt_steps: must be 0 (through the whole window) or 1 (one step), got {cfg.train.bptt_steps}")
    if cfg.model.encoder == "sasrec":
        if cfg.train.batching == "lanes":
            raise ConfigError("train.batching: lanes carry a recurrent state across a session's steps, which "
                              "model.encoder=sasrec has not; use train.batching=buckets or a recurrent encoder")
        if cfg.train.max_len > cfg.model.sasrec.max_positions:
            raise ConfigError(f"train.max_len: {cfg.train.max_len} is longer than model.sasrec.max_positions "
                              f"({cfg.model.sasrec.max_positions}), the longest window the encoder has positions for")
    if cfg.train.max_len < 2:
        raise ConfigError(f"train.max_len: must be at least 2 (one input and one target), got {cfg.train.max_len}")
    if cfg.generate.artists > cfg.generate.tracks:
        raise ConfigError(f"generate.artists: must not exceed generate.tracks ({cfg.generate.tracks}), got {cfg.generate.artists}")
    if cfg.generate.zipf_exponent <= 0:
        raise ConfigError(f"generate.zipf_exponent: must be > 0, got {cfg.generate.zipf_exponent}")
    for key, text in {"generate.end_date": cfg.generate.end_date, "ingest.earliest_ts": cfg.ingest.earliest_ts}.items():
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{key}: expected an ISO-8601 date or time such as 2026-01-01, got {text!r}") from None
    if cfg.train.report_every_steps < 0:
        raise ConfigError(f"train.report_every_steps: must be >= 0 (0 = the epochs' figures only), "
                          f"got {cfg.train.report_every_steps}")
    if cfg.ingest.max_future_minutes < 0:
        raise ConfigError(f"ingest.max_future_minutes: must be >= 0, got {cfg.ingest.max_future_minutes}")
    if cfg.sessionize.valid_days < 0 or cfg.sessionize.test_days <= 0:
        raise ConfigError("sessionize.test_days must be > 0 and sessionize.valid_days >= 0, "
                          f"got {cfg.sessionize.test_days} and {cfg.sessionize.valid_days}")
    if cfg.sessionize.min_session_length < 2:
        raise ConfigError("sessionize.min_session_length: must be at least 2 (a single play has no next item)")
    _check_split_dates(cfg.sessionize)
    if not cfg.evaluate.ks or min(cfg.evaluate.ks) <= 0:
        raise ConfigError(f"evaluate.ks: must be a non-empty list of positive integers, got {cfg.evaluate.ks}")
    _check_promote(cfg)
    if cfg.train.launcher == "local" and cfg.train.num_proc != 1:
        raise ConfigError(f"train.num_proc: the 'local' launcher runs one process, got {cfg.train.num_proc}; "
                          "set train.launcher to horovod, spark or torch_distributor for more")
    if cfg.train.warm_start is not None and not cfg.train.warm_start.strip():
        raise ConfigError("train.warm_start: empty; give 'champion', a model URI, or leave it unset for a fresh model")
    if cfg.train.warm_start is not None and cfg.train.resume:
        raise ConfigError("train.warm_start and train.resume: a resumed run continues from its own checkpoint, not "
                          "from another model; give one of them (an interrupted warm-started run resumes with --resume)")
    if cfg.train.hosts is not None:
        _check_hosts(cfg.train.hosts, cfg.train.num_proc)
    on_executors = cfg.train.launcher in ("spark", "torch_distributor") and not (cfg.spark.master or "").startswith("local")
    ckpt = cfg.train.checkpoint_dir
    if on_executors and "://" not in ckpt and not ckpt.startswith("file:") and not os.path.isabs(ckpt):
        raise ConfigError(f"train.checkpoint_dir: {ckpt!r} is a folder on each machine, but the ranks of "
                          f"train.launcher={cfg.train.launcher} run on the cluster's executors and leave the model "
                          "there for the driver: give storage every node reaches (hdfs://..., s3://..., or an "
                          "absolute path on a shared mount)")
    _check_maintenance(cfg.maintenance)
    if (cfg.lake.catalog is None) != (cfg.lake.schema is None):
        raise ConfigError("lake.catalog and lake.schema: set both (Unity Catalog) or neither (a folder)")
    if cfg.lake.catalog is None and not cfg.lake.root.strip():
        # An empty root would silently resolve to the working directory and scatter tables there.
        raise ConfigError("lake.root: must not be empty; name the lake's folder or URI, e.g. lake or s3a://bucket/lake")


def _check_split_dates(s: SessionizeConfig) -> None:
    """sessionize.valid_start / test_start: both or neither, dates, in order."""
    if (s.valid_start is None) != (s.test_start is None):
        raise ConfigError("sessionize.valid_start and sessionize.test_start: set both (fixed split dates) or neither "
                          "(the rolling sessionize.valid_days / test_days)")
    if s.valid_start is None:
        return
    parsed = {}
    for key, text in {"sessionize.valid_start": s.valid_start, "sessionize.test_start": s.test_start}.items():
        try:
            parsed[key] = date.fromisoformat(str(text))
        except ValueError:
            raise ConfigError(f"{key}: expected a date such as 2026-01-01, got {text!r}") from None
    if parsed["sessionize.valid_start"] > parsed["sessionize.test_start"]:
        raise ConfigError(f"sessionize.valid_start: must not be after sessionize.test_start, got {s.valid_start} "
                          f"and {s.test_start}")


def _check_model(m: ModelConfig) -> None:
    """model.*: ranges, and the combinations of parts that cannot work together."""
    if m.loss == "bpr_max" and m.head != "sampled":
        raise ConfigError(f"model.loss: bpr_max needs model.head=sampled (it ranks against negatives), got {m.head}")
    if m.bpr_reg < 0:
        raise ConfigError(f"model.bpr_reg: must be >= 0, got {m.bpr_reg}")
    if m.init_std <= 0:
        raise ConfigError(f"model.init_std: must be > 0, got {m.init_std}")
    if not 0.0 <= m.sample_alpha <= 1.0:
        raise ConfigError(f"model.sample_alpha: must be in [0, 1], got {m.sample_alpha}")
    if m.embedding_size < 0:
        raise ConfigError(f"model.embedding_size: must be >= 0 (0 = hidden_size), got {m.embedding_size}")
    if m.hidden_size % m.sasrec.heads:
        raise ConfigError(f"model.sasrec.heads: must divide model.hidden_size ({m.hidden_size}), got {m.sasrec.heads}")
    h = m.hybrid
    if h.score_temperature <= 0:
        raise ConfigError(f"model.hybrid.score_temperature: must be > 0, got {h.score_temperature}")
    for key, v in {"model.hybrid.knn_weight": h.knn_weight, "model.hybrid.knn_explore_weight": h.knn_explore_weight}.items():
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{key}: must be in [0, 1) (0 = without the memory there), got {v}")
    if h.knn_position_decay < 0:
        raise ConfigError(f"model.hybrid.knn_position_decay: must be >= 0 (0 = plain V-SKNN), got {h.knn_position_decay}")


def _check_hosts(hosts: str, num_proc: int) -> None:
    """train.hosts: `host:slots` entries separated by commas, with room for train.num_proc processes."""
    slots = 0
    for entry in hosts.split(","):
        host, _, n = entry.strip().partition(":")
        if not host or not n.isdigit() or int(n) < 1:
            raise ConfigError(f"train.hosts: expected host:slots entries separated by commas "
                              f"(e.g. node1:2,node2:2), got {hosts!r}")
        slots += int(n)
    if slots < num_proc:
        raise ConfigError(f"train.hosts: {slots} slots for train.num_proc={num_proc} processes")


PROMOTE_METRIC = re.compile(r"^(recall|mrr)_at_(\d+)$")


def _check_promote(cfg: Config) -> None:
    """The gate compares a metric evaluate measures, with gains a fraction can reach."""
    m = PROMOTE_METRIC.match(cfg.promote.metric)
    if m is None or int(m.group(2)) not in cfg.evaluate.ks:
        ks = ", ".join(str(k) for k in cfg.evaluate.ks)
        raise ConfigError(f"promote.metric: expected recall_at_K or mrr_at_K with K in evaluate.ks ({ks}), "
                          f"got {cfg.promote.metric!r}")
    for key, v in {"promote.min_gain_over_champion": cfg.promote.min_gain_over_champion,
                   "promote.min_gain_over_knn": cfg.promote.min_gain_over_knn}.items():
        if not -1.0 <= v <= 1.0:
            raise ConfigError(f"{key}: must be in [-1, 1] (a difference of two fractions), got {v}")


def _check_maintenance(m: MaintenanceConfig) -> None:
    """A retention below Delta's safety floor only when asked for explicitly."""
    if m.retention_hours < 0:
        raise ConfigError(f"maintenance.retention_hours: must be >= 0, got {m.retention_hours}")
    if m.retention_hours < DELTA_SAFE_RETENTION_HOURS and not m.allow_short_retention:
        raise ConfigError(
            f"maintenance.retention_hours: {m.retention_hours} is below Delta's safety minimum of "
            f"{DELTA_SAFE_RETENTION_HOURS} hours (VACUUM could delete files a running write or query still reads, "
            "and the table versions older training runs pinned); set maintenance.allow_short_retention=true to force it")
    if m.zorder_days < 1:
        raise ConfigError(f"maintenance.zorder_days: must be at least 1, got {m.zorder_days}")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn `a.b=v` strings into a nested mapping; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. train.epochs=3")
        key, raw = pair.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {pair!r}: empty key segment")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError):  # e.g. "2026-13-01" fails as a YAML date: keep the text
            value = raw
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: '{p}' is both a value and a section")
        node[parts[-1]] = raw if isinstance(value, (dict, list)) and parts[-1] not in ("ks", "conf") else value
    return nested


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file (if any: a path, or a packaged conf's name), then `--set`
    overrides; validated."""
    cfg = Config()
    if path is None and DEFAULT_CONF.exists():
        path = DEFAULT_CONF
    if path is not None:
        p = resolve_conf(path)
        if not p.is_file():
            raise ConfigError(f"--conf {p}: not a file (name the YAML file, not its folder)")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--conf {p}: not valid YAML ({e.__class__.__name__})") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"--conf {p}: expected a mapping of sections at the top level")
        _apply(cfg, data)
    _apply(cfg, parse_overrides(overrides))
    _check_ranges(cfg)
    return cfg


def model_config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig a saved model was built with (`dataclasses.asdict` of it), validated like a conf's
    `model` section: a key this version does not know is a ConfigError naming it."""
    cfg = Config()
    _apply(cfg, {"model": values})
    _check_model(cfg.model)
    return cfg.model

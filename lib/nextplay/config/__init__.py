"""Typed configuration: the one place where every config key, its type and its default live
(`sections`), and how a run's configuration is read and checked (`loading`)."""
from nextplay.config.loading import (DEFAULT_CONF, PACKAGED_CONF_DIR, load_config, model_config_from_dict,
                                     packaged_confs, parse_overrides, resolve_conf)
from nextplay.config.sections import (AnnConfig, Config, ConfigError, DailyConfig, DELTA_SAFE_RETENTION_HOURS, EvaluateConfig, GenerateConfig, HybridConfig, IngestConfig, LakeConfig, MaintenanceConfig, ModelConfig, PromoteConfig, RecurrentConfig, SASRecConfig, ScoreConfig, SessionizeConfig, SparkConfig, TrackingConfig, TrainConfig)

__all__ = ["AnnConfig", "Config", "ConfigError", "DailyConfig", "DEFAULT_CONF", "DELTA_SAFE_RETENTION_HOURS", "EvaluateConfig", "GenerateConfig", "HybridConfig", "IngestConfig", "LakeConfig", "MaintenanceConfig", "ModelConfig", "PACKAGED_CONF_DIR", "PromoteConfig", "RecurrentConfig", "SASRecConfig", "ScoreConfig", "SessionizeConfig", "SparkConfig", "TrackingConfig", "TrainConfig", "load_config", "model_config_from_dict", "packaged_confs", "parse_overrides", "resolve_conf"]

"""Typed configs: the experiment tree (``Config``) and its YAML / ``--set`` loading (``transfer.config.io``)."""
from transfer.config.experiment import (AugmentConfig, BackboneConfig, Config, DataConfig, Reference,
                                        RuntimeConfig, StudyConfig, TaskConfig, TrackingConfig, TrainConfig)
from transfer.config.io import ConfigError, from_dict, load_config, to_dict
from transfer.config.pretrain import PretrainConfig

__all__ = ["AugmentConfig", "BackboneConfig", "Config", "ConfigError", "DataConfig", "PretrainConfig", "Reference",
           "RuntimeConfig", "StudyConfig", "TaskConfig", "TrackingConfig", "TrainConfig", "from_dict", "load_config",
           "to_dict"]

from pagellm.config.cache import CacheConfig
from pagellm.config.engine_args import EngineConfig, create_engine_config
from pagellm.config.load import LoadConfig
from pagellm.config.model import ModelConfig
from pagellm.config.parallel import ParallelConfig
from pagellm.config.scheduler import SchedulerConfig

__all__ = ["CacheConfig", "EngineConfig", "LoadConfig", "ModelConfig", "ParallelConfig",
           "SchedulerConfig", "create_engine_config"]

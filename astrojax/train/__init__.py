"""Training infrastructure: resumable checkpoints (:mod:`.checkpoint`) and the other
files of a run directory (:mod:`.rundir`: env.json, metrics.jsonl, config.yaml)."""
from .checkpoint import CheckpointError, Checkpointer
from .rundir import MetricsLog, is_main_process, load_config, save_resolved_config, write_env_json

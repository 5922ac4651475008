"""Generic training: one loop (`train`) for the teacher and the distillers, with exact resume.

A task (`TrainTask`) provides parameter groups, frozen trees and an ordered
list of `UpdateRule`s; the loop provides AdamW + warm-up/cosine schedule,
gradient clipping, EMA, data parallelism, non-finite step skipping, atomic
checkpoints and metrics. See `task.py` for the contract.
"""

from gencast_rmmd.errors import TrainingDiverged
from gencast_rmmd.training.checkpoint import Checkpoint, latest_checkpoint, list_checkpoints, load_checkpoint, \
    resolve_checkpoint
from gencast_rmmd.training.config import DistributedConfig, OptimizerConfig, TrainConfig
from gencast_rmmd.training.loop import TrainResult, train
from gencast_rmmd.training.precision import cast_floating, with_compute_dtype
from gencast_rmmd.training.sharding import initialize_distributed
from gencast_rmmd.training.task import TrainableState, TrainTask, UpdateRule
from gencast_rmmd.training.tree_io import params_sha256

__all__ = [
    "Checkpoint", "DistributedConfig", "OptimizerConfig", "TrainConfig", "TrainResult", "TrainTask",
    "TrainableState", "TrainingDiverged", "UpdateRule", "cast_floating", "initialize_distributed",
    "latest_checkpoint", "list_checkpoints", "load_checkpoint", "params_sha256", "resolve_checkpoint", "train",
    "with_compute_dtype",
]

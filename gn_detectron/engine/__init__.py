"""Training and evaluation: the trainer, the launcher, set-up from the command line."""
from .launch import launch, launched_by_torchrun
from .defaults import setup_cfg
from .trainer import GNTrainer, create_ddp_model

__all__ = ["GNTrainer", "create_ddp_model", "launch", "launched_by_torchrun", "setup_cfg"]

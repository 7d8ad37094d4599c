"""Trains a few iterations with GNTrainer in several processes (as tools/train_net.py does) and
has every rank save its final weights to OUTPUT_DIR/rank<r>.pth, so a test can compare ranks.
Usage: python _dist_train.py --num-gpus 2 [train_net flags] KEY VALUE ..."""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from detectron2.utils import comm  # noqa: E402

from gn_detectron.engine import GNTrainer, launch, setup_cfg  # noqa: E402
from train_net import parse_args  # noqa: E402


def main(args):
    cfg = setup_cfg(args)
    trainer = GNTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save({k: v.cpu() for k, v in model.state_dict().items()},
               os.path.join(cfg.OUTPUT_DIR, f"rank{comm.get_rank()}.pth"))


if __name__ == "__main__":
    args = parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))

#!/usr/bin/env python
"""Trains and evaluates Mask R-CNN with Group Normalization on gn_detectron's kernels.

    python tools/train_net.py                                   # the built-in shapes dataset
    python tools/train_net.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_gn.yaml \
        --num-gpus 8
    python tools/train_net.py --eval-only MODEL.WEIGHTS output/shapes_mask_rcnn_gn/model_final.pth
    python tools/train_net.py --config-file ... --resume         # continue from last_checkpoint
    python tools/train_net.py --config-file configs/lazy/shapes_mask_rcnn_gn.py train.max_iter=100

Flags are detectron2's (--config-file, --eval-only, --resume, --num-gpus, --num-machines,
--machine-rank, --dist-url) followed by KEY VALUE config overrides; a LazyConfig (.py) takes
key=value overrides and trains as detectron2's lazyconfig_train_net.py (gn_detectron.engine.lazy). On a machine without GPUs,
--num-gpus N trains in N CPU processes (gloo). Under torchrun, the process group comes from
torchrun and --num-gpus is ignored. Writes metrics.json, TensorBoard events, checkpoints and
results.json (the COCO AP of the last evaluation) to OUTPUT_DIR.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Known third-party warnings filtered from here on, in the worker processes too (0 shows them).
os.environ.setdefault("GN_DETECTRON_FILTER_WARNINGS", "1")
from gn_detectron.utils import require_detectron2  # noqa: E402

require_detectron2("tools/train_net.py")
from detectron2.engine import default_argument_parser  # noqa: E402

from gn_detectron.engine import GNTrainer, launch, setup_cfg  # noqa: E402
from gn_detectron.checkpoint import GNCheckpointer  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "shapes", "mask_rcnn_gn.yaml")


def main(args):
    if args.config_file.endswith(".py"):  # a LazyConfig: key=value overrides, train.* keys
        from gn_detectron.engine.lazy import main as lazy_main
        return lazy_main(args)
    cfg = setup_cfg(args)
    if args.eval_only:
        model = GNTrainer.build_model(cfg)
        # refuses a model whose weights did not load (nothing given, nothing fits, NaN weights)
        GNCheckpointer(model, save_dir=cfg.OUTPUT_DIR).load_for_evaluation(cfg.MODEL.WEIGHTS, resume=args.resume)
        return GNTrainer.test(cfg, model)
    trainer = GNTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser(epilog=__doc__)
    args = parser.parse_args(argv)
    if not args.config_file:
        args.config_file = DEFAULT_CONFIG
    return args


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))

#!/usr/bin/env python
"""Pictures of a training run: predictions on validation images and the training curves.

    python tools/visualize.py --config-file configs/shapes/mask_rcnn_gn.yaml
    python tools/visualize.py --config-file ... --weights output/.../model_final.pth --num-images 6

Writes ``predictions.png`` (masks, boxes, labels and scores of the model on the first
validation images, beside the ground truth) and ``training_curves.png`` (losses, learning rate,
and AP when the run evaluated) to the run's OUTPUT_DIR, and prints their paths.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Known third-party warnings filtered from here on, in the worker processes too (0 shows them).
os.environ.setdefault("GN_DETECTRON_FILTER_WARNINGS", "1")
from gn_detectron.utils import require_detectron2  # noqa: E402

require_detectron2("tools/visualize.py")
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402

from gn_detectron.config import add_gn_config  # noqa: E402
from gn_detectron.data import register_coco_json_datasets, register_shapes_datasets  # noqa: E402


def load_cfg(config_file, opts):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_gn_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


class _Predictor(DefaultPredictor):
    """DefaultPredictor with the plugin's model building and checkpoint loading."""

    def __init__(self, cfg):
        from gn_detectron.checkpoint import GNCheckpointer
        from gn_detectron.modeling import build_model

        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        GNCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        import detectron2.data.transforms as T

        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT


def one_label_per_object(instances, iou_threshold):
    """``instances`` (detectron2 ``Instances`` with ``pred_boxes`` and ``scores``) without the
    predictions whose box overlaps a higher-scoring one's by IoU > ``iou_threshold``, whatever
    their classes: detectron2's NMS is per class, so one object may carry several labels; the
    picture keeps the best one. ``iou_threshold`` <= 0 keeps all."""
    from torchvision.ops import nms

    if iou_threshold <= 0 or len(instances) == 0:
        return instances
    keep = nms(instances.pred_boxes.tensor.float(), instances.scores.float(), iou_threshold)
    return instances[keep.sort().values]


def draw_predictions(cfg, num_images, path, score_threshold=0.3, label_nms=0.7):
    dataset = cfg.DATASETS.TEST[0]
    records = DatasetCatalog.get(dataset)[:num_images]
    metadata = MetadataCatalog.get(dataset)
    predictor = _Predictor(cfg)
    rows = []
    for rec in records:
        image = read_image(rec["file_name"], format="RGB")
        # DefaultPredictor takes BGR (OpenCV's order) and converts to INPUT.FORMAT itself
        instances = predictor(np.ascontiguousarray(image[:, :, ::-1]))["instances"].to("cpu")
        instances = one_label_per_object(instances[instances.scores >= score_threshold], label_nms)
        pred = Visualizer(image, metadata, scale=2.0, instance_mode=ColorMode.IMAGE).draw_instance_predictions(instances)
        truth = Visualizer(image, metadata, scale=2.0).draw_dataset_dict(rec)
        rows.append(np.concatenate([truth.get_image(), pred.get_image()], axis=1))
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 4 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        ax.imshow(row)
        ax.axis("off")
    title = f"ground truth (left) and predictions with score >= {score_threshold} (right)"
    if label_nms > 0:
        title += f"\nof predictions whose boxes overlap by IoU > {label_nms}, the best-scoring one"
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def read_metrics(output_dir):
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no metrics.json; train first (tools/train_net.py)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(output_dir, path):
    records = read_metrics(output_dir)
    train = [r for r in records if "total_loss" in r]
    evals = [r for r in records if any(k.startswith(("bbox/", "segm/")) for k in r)]
    n_panels = 3 if evals else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4))
    it = [r["iteration"] for r in train]
    for key in sorted({k for r in train for k in r if k.startswith("loss_")} | {"total_loss"}):
        axes[0].plot(it, [r.get(key, np.nan) for r in train], label=key, lw=2 if key == "total_loss" else 1)
    axes[0].set(title="training losses", xlabel="iteration", yscale="log")
    axes[0].legend(fontsize=7)
    axes[1].plot(it, [r.get("lr", np.nan) for r in train])
    axes[1].set(title="learning rate", xlabel="iteration")
    if evals:
        for key in ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"):
            pts = [(r["iteration"], r[key]) for r in evals if key in r]
            if pts:
                axes[2].plot(*zip(*pts), marker="o", label=key)
        axes[2].set(title="COCO AP on validation", xlabel="iteration")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "configs", "shapes", "mask_rcnn_gn.yaml"))
    parser.add_argument("--weights", default=None, help="default: OUTPUT_DIR/model_final.pth")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw predictions scoring at least this")
    parser.add_argument("--label-nms", type=float, default=0.7,
                        help="of predictions whose boxes overlap by more than this IoU, whatever their "
                             "classes, draw only the best-scoring one (0: draw all)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = load_cfg(args.config_file, args.opts)
    register_shapes_datasets()
    register_coco_json_datasets(cfg)  # the datasets of DATASETS.COCO_JSON, as train_net.py does
    cfg.MODEL.WEIGHTS = args.weights or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if not os.path.exists(cfg.MODEL.WEIGHTS):
        raise SystemExit(f"{cfg.MODEL.WEIGHTS}: no trained weights; train first (tools/train_net.py)")
    pred = draw_predictions(cfg, args.num_images, os.path.join(cfg.OUTPUT_DIR, "predictions.png"),
                            args.score_threshold, args.label_nms)
    curves = plot_curves(cfg.OUTPUT_DIR, os.path.join(cfg.OUTPUT_DIR, "training_curves.png"))
    print(f"predictions:     {pred}\ntraining curves: {curves}")


if __name__ == "__main__":
    main()

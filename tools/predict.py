#!/usr/bin/env python
"""Runs a trained model on image files: a picture per image and predictions.json.

    python tools/predict.py --config-file CONFIG --input photos/ extra.jpg "more/*.png" \\
        --output predictions/ MODEL.WEIGHTS output/model_final.pth
    python tools/predict.py --config-file CONFIG --input a.jpg --output out/ \\
        --confidence-threshold 0.7 MODEL.WEIGHTS model.pth MODEL.DEVICE cpu

--input takes files, folders (searched recursively for .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp)
and glob patterns (quoted; "**" searches recursively). Writes, under --output:

- one picture per image (``<name>.png``): the image with the predicted masks, boxes, class
  names and scores;
- ``predictions.json``: COCO results format, one entry per detection: "image_id" (1, 2, ... in
  the order the images were processed), "file_name" (the input path), "category_id" (the
  dataset's own category id), "bbox" ([x, y, width, height] in pixels), "score", and
  "segmentation" (compressed RLE, when the model predicts masks).

Class names and category ids come from the metadata of the config's first test dataset (else its
first training dataset), so DATASETS.COCO_JSON datasets and the built-in ones name their classes.
A file that is not a readable image is named and skipped; their count is printed at the end.
Runs on the GPU when there is one (MODEL.DEVICE), else on the CPU.
"""
import argparse
import glob
import json
import logging
import os
import sys

import numpy as np
import torch
import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "shapes", "mask_rcnn_gn.yaml")

logger = logging.getLogger("gn_detectron.predict")


def expand_inputs(inputs):
    """The files named by ``inputs`` (files, folders searched recursively for images, glob
    patterns), each once, in the given order (sorted within a folder or pattern).

    Raises:
        FileNotFoundError: an input that is neither a file nor a folder and matches nothing.
    """
    files = []

    def from_folder(folder):
        found = []
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            found.extend(os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS))
        return found

    for item in inputs:
        if os.path.isdir(item):
            files.extend(from_folder(item))
        elif os.path.isfile(item):
            files.append(item)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"--input {item!r}: no such file or folder, and no file matches it")
            for m in matches:
                files.extend(from_folder(m) if os.path.isdir(m) else [m])
    seen, unique = set(), []
    for f in files:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def load_cfg(config_file, opts, confidence_threshold):
    from detectron2.config import get_cfg

    from gn_detectron.config import add_gn_config
    from gn_detectron.data import register_coco_json_datasets, register_shapes_datasets

    cfg = get_cfg()
    add_gn_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_shapes_datasets()
    register_coco_json_datasets(cfg)
    return cfg


class Predictor:
    """A model of the config with ``MODEL.WEIGHTS`` loaded, called on one BGR uint8 (H, W, 3)
    image: resized as in testing (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), returns the
    ``Instances`` at the image's own size, on the CPU."""

    def __init__(self, cfg):
        import detectron2.data.transforms as T

        from gn_detectron.checkpoint import GNCheckpointer
        from gn_detectron.modeling import build_model

        if not cfg.MODEL.WEIGHTS:
            raise ValueError("MODEL.WEIGHTS is empty: give the trained weights, e.g. "
                             "MODEL.WEIGHTS output/model_final.pth")
        self.model = build_model(cfg).eval()
        GNCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    @torch.no_grad()
    def __call__(self, image_bgr):
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        output = self.model([{"image": tensor, "height": height, "width": width}])[0]
        return output["instances"].to("cpu")


def dataset_metadata(cfg):
    """Metadata of the first test dataset, else the first training dataset, else empty."""
    from detectron2.data import MetadataCatalog

    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    return MetadataCatalog.get(names[0] if names else "__unused")


def category_id_map(metadata, num_classes):
    """Model class index -> the dataset's category id (identity when the metadata has no map)."""
    id_map = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if id_map is None:
        logger.warning(f"{metadata.name}: no thing_dataset_id_to_contiguous_id in the metadata; "
                       "category_id in predictions.json is the model's class index")
        return {i: i for i in range(num_classes)}
    return {v: k for k, v in id_map.items()}


def picture_name(path, used):
    """``<stem>.png``, with a suffix when another input had the same stem."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name, k = f"{stem}.png", 1
    while name in used:
        name, k = f"{stem}_{k}.png", k + 1
    used.add(name)
    return name


def predict(cfg, files, output_dir):
    """Runs the model on ``files``; writes the pictures and predictions.json to ``output_dir``.

    Returns:
        (results, skipped): the COCO result dicts, and [(path, reason)] of unreadable files.
    """
    import cv2
    from detectron2.data.detection_utils import read_image
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    from detectron2.utils.visualizer import ColorMode, Visualizer

    metadata = dataset_metadata(cfg)
    predictor = Predictor(cfg)
    num_classes = (cfg.MODEL.RETINANET.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
                   else cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    to_dataset_id = category_id_map(metadata, num_classes)
    os.makedirs(output_dir, exist_ok=True)
    results, skipped, used_names = [], [], set()
    image_id = 0
    for path in tqdm.tqdm(files, desc="Predicting", unit="image"):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:  # PIL raises several types for files that are not images
            skipped.append((path, f"{type(e).__name__}: {e}"))
            tqdm.tqdm.write(f"skipped {path}: not a readable image ({type(e).__name__})")
            continue
        if image.ndim != 3 or image.shape[2] != 3:
            skipped.append((path, f"image of shape {image.shape}, not H x W x 3"))
            tqdm.tqdm.write(f"skipped {path}: not a 3-channel image")
            continue
        image_id += 1
        instances = predictor(image)
        for r in instances_to_coco_json(instances, image_id):
            r["category_id"] = to_dataset_id[r["category_id"]]
            r["file_name"] = path
            results.append(r)
        visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        drawn = visualizer.draw_instance_predictions(instances)
        out_path = os.path.join(output_dir, picture_name(path, used_names))
        if not cv2.imwrite(out_path, drawn.get_image()[:, :, ::-1]):
            raise OSError(f"could not write {out_path}")
    json_path = os.path.join(output_dir, "predictions.json")
    with open(json_path, "w") as f:
        json.dump(results, f)
    return results, skipped


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders (recursive) and glob patterns (quote them)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures and predictions.json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="keep the detections scoring at least this (default 0.5)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS FILE")
    args = parser.parse_args(argv)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error(f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}")
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    return args


def main(argv=None):
    from detectron2.utils.logger import setup_logger

    args = parse_args(argv)
    setup_logger(name="gn_detectron", abbrev_name="gn")
    setup_logger(name="fvcore")
    try:
        files = expand_inputs(args.input)
    except FileNotFoundError as e:
        raise SystemExit(str(e))
    if not files:
        raise SystemExit(f"--input {' '.join(args.input)}: no image files found")
    cfg = load_cfg(args.config_file, args.opts, args.confidence_threshold)
    results, skipped = predict(cfg, files, args.output)
    done = len(files) - len(skipped)
    print(f"{done} images, {len(results)} detections (score >= {args.confidence_threshold}): pictures and "
          f"predictions.json in {args.output}")
    print(f"skipped {len(skipped)} files that are not readable images"
          + (": " + ", ".join(p for p, _ in skipped) if skipped else ""))
    return results, skipped


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""COCO evaluation time: ``COCOEvaluator.evaluate()`` with each backend on the same predictions.

    python tools/benchmark_eval.py                       # 1000 images, ~50 detections each
    python tools/benchmark_eval.py --num-images 20 --json out.json

The tool makes its own data: images of the built-in shapes (only their annotations are used; no
image file is written), ground truth in a COCO json with non-contiguous category ids, a few
crowd annotations and some images without annotations; and ``--detections`` predictions per
image: jittered copies of the ground-truth masks (shifted, sometimes of another class) and
random shapes, with random scores. The predictions go through ``process()`` once (not timed);
then ``evaluate()`` (bbox and segm) is timed for each evaluator, the evaluators' runs
alternating over ``--repeat`` rounds:

- ``detectron2``: detectron2's own ``COCOEvaluator`` (pycocotools, as this install has no
  compiled detectron2 evaluator): what evaluation cost before this plugin's evaluator;
- ``pycocotools`` and ``faster_coco_eval``: :class:`gn_detectron.evaluation.COCOEvaluator` with
  each backend.

Prints the median times, the ratios, and the largest difference of any metric between the
evaluators (AP, AP50, AP75, APs, APm, APl and per-category AP, bbox and segm).
"""
import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gn_detectron.data.shapes import SHAPES_CATEGORIES, mask_to_bbox, mask_to_rle, render_shapes_image  # noqa: E402

EVALUATORS = ("detectron2", "pycocotools", "faster_coco_eval")
# Non-contiguous dataset category ids, as in COCO's own files.
CATEGORY_IDS = [3, 5, 8, 13, 21, 34]


def _shifted(mask, dy, dx):
    """``mask`` (H, W) bool moved by (dy, dx) pixels, cut at the border."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def make_ground_truth(num_images, image_size, seed):
    """(COCO dict, {image_id: list of (contiguous class, (H, W) bool mask)}) of ``num_images``
    shapes images. Every 10th image has no annotation; every 25th instance is a crowd."""
    height, width = image_size
    images, annotations, instances = [], [], {}
    for index in range(num_images):
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{index:06d}.png", "height": height, "width": width})
        if index % 10 == 9:
            instances[image_id] = []
            continue
        _, shapes = render_shapes_image(np.random.default_rng([seed, index]), height, width)
        instances[image_id] = []
        for shape in shapes:
            mask = shape["mask"]
            if not mask.any():
                continue
            instances[image_id].append((shape["category"], mask))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": CATEGORY_IDS[shape["category"]], "segmentation": mask_to_rle(mask),
                "area": int(mask.sum()), "bbox": mask_to_bbox(mask),
                "iscrowd": int(len(annotations) % 25 == 24)})
    categories = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, SHAPES_CATEGORIES)]
    return {"images": images, "annotations": annotations, "categories": categories}, instances


def make_predictions(instances, image_size, detections_per_image, seed):
    """For each image, ``detections_per_image`` detections as detectron2 ``Instances``: 8
    jittered copies of each ground-truth mask (shifts of up to a fifth of its size; one in six
    of another class), the rest ground-truth masks of other images at random places and of
    random classes; random scores."""
    from detectron2.structures import Boxes, Instances

    height, width = image_size
    rng = np.random.default_rng(seed)
    pool = [mask for truth in instances.values() for _, mask in truth]
    outputs = {}
    for image_id, truth in instances.items():
        masks, classes = [], []
        for cls, mask in truth:
            x, y, w, h = mask_to_bbox(mask)
            for _ in range(8):
                if len(masks) >= detections_per_image:
                    break
                dy, dx = (int(v) for v in rng.integers(-max(1, h // 5), max(1, h // 5) + 1, size=2))
                moved = _shifted(mask, dy, dx)
                if moved.any():
                    masks.append(moved)
                    classes.append(cls if rng.random() > 1 / 6 else int(rng.integers(len(CATEGORY_IDS))))
        while len(masks) < detections_per_image:
            dy, dx = int(rng.integers(-height // 2, height // 2)), int(rng.integers(-width // 2, width // 2))
            moved = _shifted(pool[int(rng.integers(len(pool)))], dy, dx)
            if moved.any():
                masks.append(moved)
                classes.append(int(rng.integers(len(CATEGORY_IDS))))
        boxes = []
        for m in masks:
            x, y, w, h = mask_to_bbox(m)
            boxes.append([x, y, x + w, y + h])
        inst = Instances((height, width))
        inst.pred_masks = torch.from_numpy(np.stack(masks))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.from_numpy(rng.random(len(masks)).astype(np.float32))
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        outputs[image_id] = inst
    return outputs


def register_benchmark_dataset(name, json_file, image_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    from gn_detectron.data.coco_json import register_coco_json

    register_coco_json(name, json_file, image_root)
    return name


def processed_predictions(dataset_name, outputs):
    """The per-image prediction dicts that ``COCOEvaluator.process`` makes of ``outputs``."""
    from gn_detectron.evaluation import COCOEvaluator

    evaluator = COCOEvaluator(dataset_name, tasks=("bbox", "segm"), distributed=False, backend="pycocotools")
    evaluator.reset()
    for image_id, inst in outputs.items():
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator._predictions


def build_evaluator(kind, dataset_name, output_dir):
    if kind == "detectron2":
        from detectron2.evaluation import COCOEvaluator

        return COCOEvaluator(dataset_name, tasks=("bbox", "segm"), distributed=False, output_dir=output_dir,
                             use_fast_impl=False)
    from gn_detectron.evaluation import COCOEvaluator

    return COCOEvaluator(dataset_name, tasks=("bbox", "segm"), distributed=False, output_dir=output_dir,
                         backend=kind)


def time_evaluate(kind, dataset_name, predictions, output_dir):
    """(seconds of evaluate(), seconds of building the evaluator, results)."""
    import copy

    t0 = time.perf_counter()
    evaluator = build_evaluator(kind, dataset_name, output_dir)
    build_s = time.perf_counter() - t0
    evaluator.reset()
    # detectron2's evaluator changes the category ids of its predictions in place: each run gets
    # its own copy (made outside the timed part).
    evaluator._predictions = copy.deepcopy(predictions)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        results = evaluator.evaluate()
    return time.perf_counter() - t0, build_s, results


def max_metric_difference(a, b):
    """Largest |a - b| over the metrics both hold (NaN equal to NaN), and its (task, metric)."""
    worst, where = 0.0, None
    for task in a:
        for metric, va in a[task].items():
            vb = b[task][metric]
            if np.isnan(va) and np.isnan(vb):
                continue
            d = abs(va - vb) if not (np.isnan(va) or np.isnan(vb)) else float("inf")
            if d > worst or where is None:
                worst, where = max(worst, d), (task, metric)
    return worst, where


def run(args):
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data, instances = make_ground_truth(args.num_images, args.image_size, args.seed)
        json_file = os.path.join(tmp, "instances.json")
        with open(json_file, "w") as f:
            json.dump(data, f)
        name = register_benchmark_dataset("benchmark_eval_shapes", json_file, tmp)
        outputs = make_predictions(instances, args.image_size, args.detections, args.seed + 1)
        predictions = processed_predictions(name, outputs)
        num_dets = sum(len(p["instances"]) for p in predictions)
        print(f"data: {args.num_images} images of {args.image_size[0]}x{args.image_size[1]}, "
              f"{len(data['annotations'])} ground-truth instances, {num_dets} detections "
              f"(made in {time.perf_counter() - t0:.1f} s)")
        times = {k: [] for k in args.evaluators}
        build = {k: [] for k in args.evaluators}
        results = {}
        for _ in range(args.repeat):
            for kind in args.evaluators:
                seconds, build_s, res = time_evaluate(kind, name, predictions, os.path.join(tmp, kind))
                times[kind].append(seconds)
                build[kind].append(build_s)
                results[kind] = res
    report = {
        "env": {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
                "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")},
        "config": {"num_images": args.num_images, "detections_per_image": args.detections,
                   "image_size": list(args.image_size), "repeat": args.repeat, "num_detections": num_dets},
        "rows": [],
    }
    reference = args.evaluators[0]
    print(f"\nevaluate() (bbox + segm), median of {args.repeat}, runs alternating:")
    print(f"{'evaluator':<18}{'evaluate s':>12}{'build s':>10}{'speedup vs ' + reference:>26}{'max |dAP|':>12}")
    for kind in args.evaluators:
        median = statistics.median(times[kind])
        ratio = statistics.median(times[reference]) / median
        diff, where = max_metric_difference(results[reference], results[kind])
        report["rows"].append({"evaluator": kind, "evaluate_s": median, "evaluate_runs_s": times[kind],
                               "build_s": statistics.median(build[kind]), "speedup": ratio,
                               "max_abs_ap_difference": diff, "largest_difference_at": where,
                               "results": results[kind]})
        print(f"{kind:<18}{median:>12.2f}{statistics.median(build[kind]):>10.2f}{ratio:>25.2f}x{diff:>12.4f}")
    by_kind = {r["evaluator"]: r for r in report["rows"]}
    if "pycocotools" in by_kind and "faster_coco_eval" in by_kind:
        ratio = by_kind["pycocotools"]["evaluate_s"] / by_kind["faster_coco_eval"]["evaluate_s"]
        rounds = [p / f for p, f in zip(times["pycocotools"], times["faster_coco_eval"])]
        report["faster_vs_pycocotools"] = ratio
        report["faster_vs_pycocotools_by_round"] = rounds
        print(f"\nfaster_coco_eval vs pycocotools (same evaluator): {ratio:.2f}x faster (ratio of the medians; "
              f"by round: {', '.join(f'{r:.2f}x' for r in rounds)})")
    for kind in EVALUATORS:
        if kind in by_kind and "AP" in by_kind[kind]["results"].get("segm", {}):
            r = by_kind[kind]["results"]
            print(f"{kind}: bbox AP {r['bbox']['AP']:.2f}, segm AP {r['segm']['AP']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"report: {args.json}")
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--detections", type=int, default=50, help="detections per image")
    parser.add_argument("--image-size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the median is reported")
    parser.add_argument("--evaluators", nargs="+", default=list(EVALUATORS), choices=EVALUATORS,
                        help="the first is the reference of the ratios")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.detections < 1 or args.repeat < 1 or min(args.image_size) < 32:
        parser.error("--num-images, --detections and --repeat must be >= 1, --image-size sides >= 32")
    return args


if __name__ == "__main__":
    run(parse_args())

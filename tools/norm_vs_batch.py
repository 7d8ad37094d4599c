#!/usr/bin/env python
"""The Group Normalization paper's Figure 1 in miniature: validation error of one small ResNet
trained with BatchNorm and with the plugin's GroupNorm at 32, 16, 8, 4 and 2 images per batch.

The task is classification of shape crops made with the built-in shapes generator
(``gn_detectron.data.shapes.render_shapes_image``: one crop around each shape of a rendered
image, labelled with its category; other shapes may show at the crop's edges). Every run trains
for the same number of epochs from the same initialisation with SGD (momentum 0.9), the learning
rate scaled linearly with the batch (``--base-lr`` per 32 images, as the paper does) on a cosine
schedule; BN is evaluated with its running statistics, as in the paper. Writes
``results.json``, ``table.md`` and ``norm_vs_batch.png`` (validation error against images per
batch) to ``--output-dir``.

    python tools/norm_vs_batch.py                 # the full comparison (under 15 min on 2 cores)
    python tools/norm_vs_batch.py --quick         # a few seconds: a smoke run
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gn_detectron.data.shapes import SHAPES_CATEGORIES, mask_to_bbox, render_shapes_image  # noqa: E402
from gn_detectron.layers import GroupNorm  # noqa: E402

NORMS = ("BN", "GN")
QUICK = {"batch_sizes": [4, 2], "epochs": 1, "num_train": 24, "num_val": 12, "crop_size": 16,
         "widths": [8, 16, 16]}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def _square_crop(image, box, margin, size):
    """(size, size, 3) uint8: the square of side ``margin`` x the longer side of ``box`` (XYWH)
    centred on it, padded by replicating the border where it leaves the image."""
    x, y, w, h = box
    side = max(int(round(max(w, h) * margin)), 2)
    x0 = int(round(x + w / 2 - side / 2))
    y0 = int(round(y + h / 2 - side / 2))
    height, width = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - width, y0 + side - height)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    crop = image[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def make_shape_crops(num_crops, seed, crop_size=24, image_size=(96, 96), margin=1.2):
    """Shape crops from images of the built-in generator.

    Returns:
        images: (N, 3, crop_size, crop_size) float32, scaled to about [-1, 1].
        labels: (N,) int64 category indices into ``SHAPES_CATEGORIES``.
    """
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    while len(crops) < num_crops:
        image, instances = render_shapes_image(rng, *image_size)
        for instance in instances:
            crops.append(_square_crop(image, mask_to_bbox(instance["mask"]), margin, crop_size))
            labels.append(instance["category"])
    images = np.stack(crops[:num_crops]).astype(np.float32).transpose(0, 3, 1, 2)
    images = (images - 127.5) / 64.0
    return torch.from_numpy(images), torch.tensor(labels[:num_crops], dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def norm_layer_factory(norm, num_groups):
    """A callable(num_channels) -> normalization module: BatchNorm2d, or the plugin's GroupNorm
    with ``gcd(num_groups, num_channels)`` groups (``num_groups`` where it divides the channels)."""
    if norm == "BN":
        return nn.BatchNorm2d
    if norm == "GN":
        return lambda channels: GroupNorm(math.gcd(num_groups, channels), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def small_resnet(norm, widths=(16, 32, 64), num_groups=8, num_classes=len(SHAPES_CATEGORIES)):
    """A ResNet of torchvision BasicBlocks for small images: a 3x3 stem, one block per width
    (the 2nd and later halve the resolution), global average pooling and a linear classifier.
    The last norm of each block starts at zero (as in the paper's ResNets)."""
    make_norm = norm_layer_factory(norm, num_groups)
    layers = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), make_norm(widths[0]), nn.ReLU(inplace=True)]
    in_channels = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or in_channels != width:
            downsample = nn.Sequential(nn.Conv2d(in_channels, width, 1, stride, bias=False), make_norm(width))
        block = BasicBlock(in_channels, width, stride, downsample, norm_layer=make_norm)
        nn.init.zeros_(block.bn2.weight)
        layers.append(block)
        in_channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train_and_evaluate(norm, batch_size, data, args):
    """Trains one model; returns a dict of the run's results (validation error in %)."""
    train_images, train_labels, val_images, val_labels = data
    torch.manual_seed(args.seed)
    model = small_resnet(norm, args.widths, args.groups)
    lr = args.base_lr * batch_size / 32
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_labels) // batch_size
    total_steps = steps_per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    order_generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    model.train()
    losses = []
    for _ in range(args.epochs):
        order = torch.randperm(len(train_labels), generator=order_generator)
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(train_images[index]), train_labels[index])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{norm} at batch {batch_size}: the loss became {loss.item()}; "
                                         "lower --base-lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    train_seconds = time.perf_counter() - start
    model.eval()  # BN: running statistics
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in val_images.split(256)])
    error = 100.0 * (predictions != val_labels).float().mean().item()
    tail = losses[-max(1, steps_per_epoch // 4):]
    return {"norm": norm, "batch_size": batch_size, "lr": lr, "steps": total_steps,
            "val_error": round(error, 2), "final_train_loss": round(sum(tail) / len(tail), 4),
            "train_seconds": round(train_seconds, 1)}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def format_table(results, batch_sizes):
    by_key = {(r["norm"], r["batch_size"]): r for r in results}
    lines = ["| images per batch | " + " | ".join(str(b) for b in batch_sizes) + " |",
             "|---" * (len(batch_sizes) + 1) + "|"]
    for norm in NORMS:
        cells = [f"{by_key[(norm, b)]['val_error']:.1f}" for b in batch_sizes]
        lines.append(f"| {norm} val error (%) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, batch_sizes, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for norm, colour in zip(NORMS, ("tab:blue", "tab:red")):
        errors = [next(r["val_error"] for r in results if r["norm"] == norm and r["batch_size"] == b)
                  for b in batch_sizes]
        ax.plot(batch_sizes, errors, "o-", color=colour, label=norm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes)
    ax.set_xticklabels([str(b) for b in batch_sizes])
    ax.invert_xaxis()
    ax.set_xlabel("images per batch")
    ax.set_ylabel("validation error (%)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 16, 8, 4, 2])
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--num-train", type=int, default=4000, help="training crops")
    p.add_argument("--num-val", type=int, default=1000, help="validation crops")
    p.add_argument("--crop-size", type=int, default=24)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64], help="channels of the blocks")
    p.add_argument("--groups", type=int, default=8, help="GN groups (fewer where a layer has fewer channels)")
    p.add_argument("--base-lr", type=float, default=0.1, help="learning rate per 32 images")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of seconds: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes of one thread each that train runs side by side (1: in this process)")
    p.add_argument("--output-dir", default="output/norm_vs_batch")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if any(b < 2 for b in args.batch_sizes):
        p.error(f"--batch-sizes must be >= 2 (BN needs 2 images for batch statistics), got {args.batch_sizes}")
    if args.num_train < max(args.batch_sizes):
        p.error(f"--num-train ({args.num_train}) must be at least the largest batch ({max(args.batch_sizes)})")
    if args.epochs < 1 or args.num_val < 1 or args.crop_size < 8 or args.workers < 1:
        p.error("--epochs, --num-val and --workers must be >= 1 and --crop-size >= 8")
    return args


def _make_data(args):
    train = make_shape_crops(args.num_train, args.seed, args.crop_size)
    val = make_shape_crops(args.num_val, args.seed + 1, args.crop_size)
    return (*train, *val)


_WORKER_DATA = None


def _init_worker(args):
    """A worker process: one thread (the tiny steps of this model gain nothing from more), and
    its own copy of the crops, generated from the same seeds."""
    global _WORKER_DATA
    torch.set_num_threads(1)
    _WORKER_DATA = _make_data(args)


def _run_in_worker(norm, batch_size, args):
    return train_and_evaluate(norm, batch_size, _WORKER_DATA, args)


def run_all(args):
    """Trains every (norm, batch size) of ``args``, in ``args.workers`` processes of one thread
    each when > 1 (the runs are independent and each is deterministic, so the results are those
    of a serial run); returns the results in (batch size, norm) order."""
    jobs = [(norm, batch_size) for batch_size in args.batch_sizes for norm in NORMS]

    def report(result):
        print(f"{result['norm']} batch {result['batch_size']:3d}: lr {result['lr']:.5f}, {result['steps']} steps, "
              f"val error {result['val_error']:.1f}%, train loss {result['final_train_loss']:.3f}, "
              f"{result['train_seconds']:.0f} s", flush=True)
        return result

    if args.workers <= 1:
        data = _make_data(args)
        return [report(train_and_evaluate(norm, batch_size, data, args)) for norm, batch_size in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # The slowest runs (smallest batches: most steps) first, so that the workers end together.
    order = sorted(jobs, key=lambda job: job[1])
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_init_worker,
                             initargs=(args,)) as pool:
        futures = [pool.submit(_run_in_worker, norm, batch_size, args) for norm, batch_size in order]
        by_job = {}
        for future in as_completed(futures):
            result = report(future.result())
            by_job[(result["norm"], result["batch_size"])] = result
    return [by_job[job] for job in jobs]


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.perf_counter()
    print(f"{len(args.batch_sizes) * len(NORMS)} runs of {args.epochs} epochs over {args.num_train} "
          f"{args.crop_size}x{args.crop_size} training crops ({args.num_val} for validation), "
          f"{args.workers} worker(s)", flush=True)
    results = run_all(args)
    table = format_table(results, args.batch_sizes)
    print(table)
    settings = {k: v for k, v in vars(args).items() if k != "output_dir"}
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"settings": settings, "results": results, "total_seconds": round(time.perf_counter() - start, 1),
                   "torch": torch.__version__, "threads_per_run": 1 if args.workers > 1 else torch.get_num_threads(),
                   "machine": platform.processor() or platform.machine()}, f, indent=1)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    title = (f"small ResNet {args.widths}, {args.num_train} shape crops {args.crop_size}px, "
             f"{args.epochs} epochs, lr {args.base_lr}xB/32")
    plot(results, args.batch_sizes, os.path.join(args.output_dir, "norm_vs_batch.png"), title)
    print(f"wrote {args.output_dir}/results.json, table.md, norm_vs_batch.png "
          f"({time.perf_counter() - start:.0f} s in all)")
    return results


if __name__ == "__main__":
    main()

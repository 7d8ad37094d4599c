#!/usr/bin/env python
"""The demo's Mask R-CNN trained at 2 images per batch with three normalizations, box and mask
AP side by side:

    GN        the demo as it is: the plugin's GN in the ResNet, the FPN and both heads
    BN        BatchNorm in training mode (batch statistics, running statistics at test) in the
              same places
    FrozenBN  detectron2's usual detection set-up: FrozenBatchNorm in the ResNet, no norm in the
              FPN and the heads. From scratch there are no pre-trained statistics: each layer's
              are set from the first training batch (``calibrate_frozen_bn`` of
              tools/benchmark_train.py) and then stay fixed

Each variant trains in its own process (``OUTPUT_DIR/<variant>``) with the same config, seed and
schedule; a variant that diverges is reported as such. Writes ``results.json``, ``table.md`` and
``compare_norms.png`` to ``--output-dir``.

    python tools/compare_norms.py                                  # the demo's full schedule, x3
    python tools/compare_norms.py --variants GN BN --output-dir /tmp/c SOLVER.MAX_ITER 300

Options come first; everything after the first ``KEY VALUE`` pair overrides the config.
"""
import argparse
import json
import os
import subprocess
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, ROOT)
sys.path.insert(0, TOOLS)

DEFAULT_CONFIG = os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml")
_NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM")
# Overrides per variant, on top of the config.
VARIANTS = {
    "GN": {},
    "BN": {key: "BN" for key in _NORM_KEYS},
    "FrozenBN": {"MODEL.RESNETS.NORM": "FrozenBN", "MODEL.FPN.NORM": "",
                 "MODEL.ROI_BOX_HEAD.NORM": "", "MODEL.ROI_MASK_HEAD.NORM": ""},
}
METRICS = ("bbox", "segm")


def variant_opts(name, opts, output_dir):
    """The ``KEY VALUE`` list of variant ``name``: ``opts``, then the variant's norms and its
    output folder."""
    flat = list(opts)
    for key, value in VARIANTS[name].items():
        flat += [key, value]
    return flat + ["OUTPUT_DIR", os.path.join(output_dir, name)]


def run_variant(name, config_file, opts):
    """Trains and evaluates one variant in this process; returns detectron2's results dict."""
    from detectron2.engine import default_argument_parser

    from benchmark_train import calibrate_frozen_bn
    from gn_detectron.engine import GNTrainer, setup_cfg

    args = default_argument_parser().parse_args(["--config-file", config_file, *opts])
    cfg = setup_cfg(args)
    trainer = GNTrainer(cfg)
    trainer.resume_or_load(resume=False)
    if name == "FrozenBN":
        first_batch = next(iter(trainer.data_loader))
        count = calibrate_frozen_bn(trainer.model, first_batch)
        print(f"FrozenBN: statistics of {count} layers set from the first batch", flush=True)
    return trainer.train()


def _ap(results, metric):
    """AP of ``metric`` in a results.json (task -> metric -> value, or dataset -> task -> ...);
    None where it is missing or NaN."""
    if results and metric not in results and len(results) == 1:
        results = next(iter(results.values()))
    value = results.get(metric, {}).get("AP") if results else None
    return None if value is None else round(float(value), 1)


def run_all(variants, config_file, opts, output_dir):
    """Runs each variant in a child process; returns a list of result rows."""
    rows = []
    for name in variants:
        variant_dir = os.path.join(output_dir, name)
        os.makedirs(variant_dir, exist_ok=True)
        log_path = os.path.join(variant_dir, "compare_norms.log")
        command = [sys.executable, os.path.abspath(__file__), "--run-variant", name,
                   "--config-file", config_file, *variant_opts(name, opts, output_dir)]
        print(f"[{name}] training, log in {log_path}", flush=True)
        start = time.perf_counter()
        with open(log_path, "w") as log:
            returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        results_path = os.path.join(variant_dir, "results.json")
        results = None
        if returncode == 0 and os.path.isfile(results_path):
            with open(results_path) as f:
                results = json.load(f)
        row = {"variant": name, "box_AP": _ap(results, "bbox"), "mask_AP": _ap(results, "segm"),
               "seconds": round(seconds, 1), "status": "ok" if results else _failure(log_path, returncode)}
        rows.append(row)
        print(f"[{name}] box AP {row['box_AP']}, mask AP {row['mask_AP']}, {seconds:.0f} s, {row['status']}",
              flush=True)
    return rows


def _failure(log_path, returncode):
    """A one-line reason from a failed variant's log."""
    with open(log_path) as f:
        lines = [line.strip() for line in f if line.strip()]
    for line in reversed(lines):
        if "diverged" in line or "Error" in line:
            return line[:200]
    return f"failed (exit code {returncode}); see {log_path}"


def format_table(rows):
    def cell(v):
        return "-" if v is None else f"{v:.1f}"

    lines = ["| variant | box AP | mask AP | time (s) | status |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {cell(r['box_AP'])} | {cell(r['mask_AP'])} | {r['seconds']:.0f} | {r['status']} |"
              for r in rows]
    return "\n".join(lines)


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    positions = range(len(rows))
    for offset, (key, label, colour) in zip((-0.2, 0.2), (("box_AP", "box AP", "tab:blue"),
                                                          ("mask_AP", "mask AP", "tab:orange"))):
        values = [r[key] or 0.0 for r in rows]
        bars = ax.bar([p + offset for p in positions], values, width=0.4, label=label, color=colour)
        for bar, row in zip(bars, rows):
            text = f"{row[key]:.1f}" if row[key] is not None else ("n/a" if row["status"] == "ok" else "failed")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(list(positions))
    ax.set_xticklabels([r["variant"] for r in rows])
    ax.set_ylabel("COCO AP")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--output-dir", default="output/compare_norms")
    p.add_argument("--run-variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every variant")
    args = p.parse_args(argv)
    if len(args.opts) % 2:
        p.error(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.run_variant:
        run_variant(args.run_variant, args.config_file, args.opts)
        return None
    os.makedirs(args.output_dir, exist_ok=True)
    rows = run_all(args.variants, args.config_file, args.opts, args.output_dir)
    table = format_table(rows)
    print(table)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"config_file": args.config_file, "opts": args.opts, "rows": rows}, f, indent=1)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    title = "Mask R-CNN on shapes, 2 images per batch" + (f" ({' '.join(args.opts)})" if args.opts else "")
    plot(rows, os.path.join(args.output_dir, "compare_norms.png"), title)
    print(f"wrote {args.output_dir}/results.json, table.md, compare_norms.png")
    return rows


if __name__ == "__main__":
    main()

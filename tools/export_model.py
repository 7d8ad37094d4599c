#!/usr/bin/env python
"""Exports a trained model to ONNX or TorchScript and checks the exported file against PyTorch.

    python tools/export_model.py --config-file configs/shapes/mask_rcnn_gn.yaml \\
        --format onnx --export-method tracing --output export/ \\
        MODEL.WEIGHTS output/shapes_mask_rcnn_gn/model_final.pth
    python tools/export_model.py ... --format torchscript --export-method scripting
    python tools/export_model.py ... --format torchscript --native   # loads without gn_detectron
    python tools/export_model.py ... --run-eval                       # COCO AP of both

The interface and conventions of detectron2's tools/deploy/export_model.py: --config-file,
--format {onnx,torchscript}, --export-method {tracing,scripting}, --sample-image (default: the
first image of DATASETS.TEST), --output (a folder: model.onnx or model.ts), --run-eval, then
KEY VALUE config overrides. Tracing exports a graph of one image input ((3, H, W) float32, the
model's input format, resized by ResizeShortestEdge as at test time; H and W dynamic in ONNX)
and the flattened fields of its detections (before the final resize to the original image);
scripting exports detectron2's scripting adapter (a tuple of {"image": tensor} dicts in, a dict
of tensors per image out).

After exporting, the file is loaded and run (ONNX Runtime, torch.jit.load) on the sample image
and the largest differences from PyTorch's detections are printed: boxes (pixels), scores,
classes, ROI masks. --run-eval evaluates the exported model on DATASETS.TEST[0] and prints its
COCO AP beside PyTorch's.

The ONNX graph holds standard ONNX ops only. A TorchScript file keeps the plugin's kernels: load
it where gn_detectron is imported first (`import gn_detectron; torch.jit.load(...)`). With
--native the model's GroupNorm layers are turned back into torch.nn.GroupNorm first
(gn_detectron.convert_to_native, same weights and results), and the file then needs only
torch and torchvision (import torchvision for its roi_align / nms ops).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

logger = logging.getLogger("gn_detectron.export_model")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Export a model for deployment.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="output format")
    parser.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing",
                        help="how to export (scripting: TorchScript only)")
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--sample-image", default=None, type=str,
                        help="sample image for input (default: the first image of DATASETS.TEST)")
    parser.add_argument("--run-eval", action="store_true",
                        help="evaluate the exported model on DATASETS.TEST and print its AP beside PyTorch's")
    parser.add_argument("--output", required=True, help="output directory for the exported model")
    parser.add_argument("--native", action="store_true",
                        help="export with torch.nn.GroupNorm in place of the plugin's (same weights): "
                             "the TorchScript file then loads without gn_detectron")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (11 to 20)")
    parser.add_argument("opts", help="Modify config options using the command-line: KEY VALUE pairs",
                        default=None, nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.export_method == "scripting" and args.format != "torchscript":
        parser.error("--export-method scripting exports TorchScript only: use --format torchscript")
    if args.native and args.format != "torchscript":
        parser.error("--native is for TorchScript files: an ONNX file never needs gn_detectron, and PyTorch's "
                     "own GroupNorm export fails on images without detections; drop --native")
    if not args.config_file:
        parser.error("--config-file is required")
    if not 11 <= args.opset <= 20:
        parser.error(f"--opset must be within 11 and 20, got {args.opset}")
    return args


def setup_cfg(args):
    from detectron2.config import get_cfg

    from gn_detectron import add_gn_config
    from gn_detectron.data import register_shapes_datasets

    cfg = get_cfg()
    add_gn_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.DATALOADER.NUM_WORKERS = 0
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_shapes_datasets()
    return cfg


def build_model(cfg, native):
    from gn_detectron import build_model, convert_to_native
    from gn_detectron.checkpoint import GNCheckpointer

    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        GNCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a model with random weights")
    model.eval()
    if native:
        convert_to_native(model)
    return model


def sample_input(cfg, args):
    """{"image": (3, H, W) float32 resized as at test time, "height", "width"} of the sample."""
    if args.sample_image is None:
        from detectron2.data import build_detection_test_loader

        inputs = next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))[0]
    else:
        import detectron2.data.transforms as T
        from detectron2.data import detection_utils

        original = detection_utils.read_image(args.sample_image, format=cfg.INPUT.FORMAT)
        aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        image = aug.get_transform(original).apply_image(original)
        inputs = {"image": torch.as_tensor(image.transpose(2, 0, 1).copy()),
                  "height": original.shape[0], "width": original.shape[1]}
    return {"image": inputs["image"].float(), "height": inputs["height"], "width": inputs["width"]}


def export(model, image, args):
    """Writes the artifact; returns (path, run) with run(image) -> Instances of the exported model."""
    from gn_detectron.export import detection as D

    os.makedirs(args.output, exist_ok=True)
    path = D.artifact_path(args.output, args.format)
    if args.export_method == "scripting":
        D.script_torchscript(model, path)
        scripted = torch.jit.load(path)

        def run(img):
            with torch.no_grad():
                fields = scripted(({"image": img},))[0]
            return D.instances_from_fields(fields, tuple(img.shape[-2:]))

        return path, run
    adapter = D.tracing_adapter(model, image)
    if args.format == "onnx":
        D.export_onnx(adapter, image, path, opset_version=args.opset)
        exported = D.OnnxRuntimeModel(path)
    else:
        D.trace_torchscript(adapter, image, path)
        exported = torch.jit.load(path)
    logger.info("Inputs schema: " + str(adapter.inputs_schema))
    logger.info("Outputs schema: " + str(adapter.outputs_schema))
    return path, lambda img: D.run_exported(exported, adapter, img)


def evaluate(cfg, model, run_exported, output_dir):
    """COCO AP of PyTorch's model and of the exported one on DATASETS.TEST[0]."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from gn_detectron.export.detection import postprocess

    dataset = cfg.DATASETS.TEST[0]
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)

    def exported_model(inputs):
        outputs = []
        for inp in inputs:
            instances = run_exported(inp["image"].float())
            outputs.append({"instances": postprocess(instances, inp["height"], inp["width"])})
        return outputs

    results = {}
    for name, fn in (("pytorch", model), ("exported", exported_model)):
        loader = build_detection_test_loader(cfg, dataset)
        evaluator = COCOEvaluator(dataset, tasks=tasks, distributed=False,
                                  output_dir=os.path.join(output_dir, f"eval_{name}"))
        with torch.no_grad():
            results[name] = inference_on_dataset(fn, loader, evaluator)
    return results


def main(argv=None):
    from detectron2.utils.logger import setup_logger

    import gn_detectron  # noqa: F401  (registers the ONNX symbolic)
    from gn_detectron.export.detection import instance_differences

    args = parse_args(argv)
    setup_logger(name="gn_detectron")
    setup_logger(name="detectron2")
    logger.info("Command line arguments: " + str(args))
    cfg = setup_cfg(args)
    model = build_model(cfg, args.native)
    inputs = sample_input(cfg, args)
    image = inputs["image"]

    path, run_exported = export(model, image, args)
    print(f"Exported {args.format} ({args.export_method}{', native GroupNorm' if args.native else ''}) to {path}")

    with torch.no_grad():
        reference = model.inference([{"image": image}], do_postprocess=False)[0]
    diff = instance_differences(reference, run_exported(image))
    print(f"Exported vs PyTorch on the sample image ({tuple(image.shape)}): " +
          ", ".join(f"{k} {v}" for k, v in diff.items()))

    if args.run_eval:
        results = evaluate(cfg, model, run_exported, args.output)
        for task in results["pytorch"]:
            print(f"{task} AP: PyTorch {results['pytorch'][task]['AP']:.3f}, "
                  f"exported {results['exported'][task]['AP']:.3f}")
    return diff


if __name__ == "__main__":
    main()

"""Export of detectron2 detection models (``GeneralizedRCNN``) and checks of the exported files.

The conventions are those of detectron2's ``tools/deploy/export_model.py``:
- tracing: :class:`detectron2.export.TracingAdapter` around ``model.inference(inputs,
  do_postprocess=False)``; the exported graph takes one image, a (3, H, W) float32 tensor in
  the model's input format (already resized as by ``ResizeShortestEdge``), and returns the
  flattened fields of its ``Instances`` (``adapter.outputs_schema`` rebuilds them);
- scripting: :func:`detectron2.export.scripting_with_instances` of an adapter that takes a tuple
  of ``{"image": tensor}`` dicts and returns each image's fields as a dict of tensors.
Outputs are in the coordinates of the network's input image (no final resize); see
:func:`postprocess` for the detector's resize to the original image size.
"""
import os
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "SCRIPTING_FIELDS",
    "ScriptableAdapter",
    "tracing_adapter",
    "export_onnx",
    "output_names",
    "trace_torchscript",
    "script_torchscript",
    "OnnxRuntimeModel",
    "run_exported",
    "instance_differences",
    "postprocess",
]

# The fields of the Instances a Mask R-CNN creates at inference, with their types, as
# detectron2's scripting needs them declared.
SCRIPTING_FIELDS = {
    "proposal_boxes": "Boxes",
    "objectness_logits": "Tensor",
    "pred_boxes": "Boxes",
    "scores": "Tensor",
    "pred_classes": "Tensor",
    "pred_masks": "Tensor",
}


def _scripting_fields():
    from detectron2.structures import Boxes

    types = {"Boxes": Boxes, "Tensor": torch.Tensor}
    return {name: types[t] for name, t in SCRIPTING_FIELDS.items()}


def _check_generalized_rcnn(model):
    from detectron2.modeling import GeneralizedRCNN

    if not isinstance(model, GeneralizedRCNN):
        raise TypeError(f"expected a detectron2 GeneralizedRCNN (MODEL.META_ARCHITECTURE "
                        f"'GeneralizedRCNN'), got {type(model).__name__}")


def _inference(model, inputs):
    # do_postprocess=False: boxes in the input image's coordinates and the ROI masks (M, 1, 28, 28).
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def tracing_adapter(model: nn.Module, image: Tensor):
    """detectron2's ``TracingAdapter`` of a ``GeneralizedRCNN`` in eval mode for one image
    ((3, H, W) float32, the model's input format): ``adapter(image)`` returns a tuple of tensors,
    ``adapter.outputs_schema(outputs)`` the ``[{"instances": Instances}]`` they flatten."""
    from detectron2.export import TracingAdapter

    _check_generalized_rcnn(model)
    if model.training:
        raise ValueError("export needs the model in eval mode: call model.eval() first")
    # eval() on the adapter too: exporters restore the adapter's mode, which reaches the model.
    return TracingAdapter(model, [{"image": image}], _inference).eval()


def export_onnx(adapter, image: Tensor, path: str, opset_version: int = 17) -> str:
    """Exports a :func:`tracing_adapter` to ONNX with the TorchScript-based exporter (the graph
    holds standard ONNX ops only; the plugin's GroupNorm is translated by the symbolic that
    ``import gn_detectron`` registers). The input is named "image", its height and width are
    dynamic; the outputs are named by :func:`output_names`. Returns ``path``."""
    with torch.no_grad():
        if adapter.outputs_schema is None:  # known after one run
            adapter(image)
        torch.onnx.export(adapter, (image,), path, dynamo=False, opset_version=opset_version,
                          input_names=["image"], output_names=output_names(adapter.outputs_schema),
                          dynamic_axes={"image": {1: "height", 2: "width"}})
    return path


def output_names(schema) -> List[str]:
    """Names of a traced adapter's flattened outputs, from its ``outputs_schema``: the
    ``Instances`` field names (sorted, as detectron2 flattens them) then "image_size", e.g.
    ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"] for one image of Mask
    R-CNN; prefixed "<i>." with several images."""
    from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema

    def walk(s, prefix):
        if isinstance(s, InstancesSchema):
            return [n for k, sub in zip(s.keys, s.schemas) for n in walk(sub, prefix + k)] + [prefix + "image_size"]
        if isinstance(s, DictSchema):  # the {"instances": ...} level adds no name
            return [n for sub in s.schemas for n in walk(sub, prefix)]
        if isinstance(s, ListSchema):
            if len(s.schemas) == 1:
                return walk(s.schemas[0], prefix)
            return [n for i, sub in enumerate(s.schemas) for n in walk(sub, f"{prefix}{i}.")]
        return [prefix.rstrip(".") or "output"]

    return walk(schema, "")


def trace_torchscript(adapter, image: Tensor, path: str = None):
    """``torch.jit.trace`` of a :func:`tracing_adapter`, saved to ``path`` if given. The
    tracer's own re-run check is off (it runs the model twice more): compare the outputs of the
    traced module with the model's instead (:func:`instance_differences`)."""
    with torch.no_grad():
        ts = torch.jit.trace(adapter, (image,), check_trace=False)
    if path:
        torch.jit.save(ts, path)
    return ts


class ScriptableAdapter(nn.Module):
    """Scriptable wrapper of a ``GeneralizedRCNN``: takes a tuple of ``{"image": (3, H, W)}``
    dicts, returns for each image its ``Instances`` fields as a dict of tensors (boxes as
    (R, 4) XYXY, masks as (R, 1, 28, 28) ROI masks), as in detectron2's export tool."""

    def __init__(self, model: nn.Module):
        super().__init__()
        _check_generalized_rcnn(model)
        self.model = model
        self.eval()

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


def script_torchscript(model: nn.Module, path: str = None):
    """:func:`detectron2.export.scripting_with_instances` of :class:`ScriptableAdapter`
    (``model`` in eval mode), saved to ``path`` if given."""
    from detectron2.export import scripting_with_instances

    if model.training:
        raise ValueError("export needs the model in eval mode: call model.eval() first")
    ts = scripting_with_instances(ScriptableAdapter(model), _scripting_fields())
    if path:
        torch.jit.save(ts, path)
    return ts


class OnnxRuntimeModel:
    """An exported ``model.onnx`` run by ONNX Runtime: ``runner(image)`` takes the tensors the
    graph was traced with and returns its outputs as torch tensors (a tuple). ``providers``
    default to CUDA (where this onnxruntime build has it) then CPU; ``threads`` sets the
    intra-op threads (0: ONNX Runtime's default)."""

    def __init__(self, path: str, providers=None, threads: int = 0):
        import onnxruntime as ort

        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the ONNX graph takes {len(self.input_names)} inputs "
                             f"({self.input_names}), got {len(inputs)}")
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, inputs)}
        return tuple(torch.from_numpy(o) for o in self.session.run(None, feeds))


def run_exported(exported, adapter, image: Tensor):
    """Runs a traced export (an :class:`OnnxRuntimeModel` or a loaded TorchScript module) on
    ``image`` and returns its ``Instances`` rebuilt with ``adapter.outputs_schema``."""
    with torch.no_grad():
        outputs = exported(image)
    if isinstance(outputs, Tensor):
        outputs = (outputs,)
    return adapter.outputs_schema(tuple(outputs))[0]["instances"]


def instances_from_fields(fields: Dict[str, Tensor], image_size):
    """``Instances`` from the dict of tensors a scripted :class:`ScriptableAdapter` returns."""
    from detectron2.structures import Boxes, Instances

    inst = Instances(image_size)
    for name, value in fields.items():
        inst.set(name, Boxes(value) if name in ("pred_boxes", "proposal_boxes") else value)
    return inst


def instance_differences(reference, other) -> Dict[str, float]:
    """How far the detections ``other`` (``Instances``) are from ``reference``, matched in
    order (both are sorted by score): ``count`` (both numbers), ``boxes_px`` (largest absolute
    coordinate difference, pixels), ``scores``, ``classes_differ`` (how many classes differ)
    and ``masks`` (largest ROI-mask probability difference). With different counts only the
    counts are given: the detections do not correspond one to one."""
    n_ref, n_other = len(reference), len(other)
    diff = {"count": (n_ref, n_other)}
    if n_ref != n_other:
        return diff
    if n_ref == 0:
        return {**diff, "boxes_px": 0.0, "scores": 0.0, "classes_differ": 0, "masks": 0.0}

    def largest(a, b):
        return (a.double() - b.double()).abs().max().item()

    diff["boxes_px"] = largest(reference.pred_boxes.tensor, other.pred_boxes.tensor)
    diff["scores"] = largest(reference.scores, other.scores)
    diff["classes_differ"] = int((reference.pred_classes != other.pred_classes).sum())
    if reference.has("pred_masks") and other.has("pred_masks"):
        diff["masks"] = largest(reference.pred_masks, other.pred_masks)
    return diff


def postprocess(instances, height: int, width: int):
    """detectron2's final resize of detections to the original image size (what
    ``do_postprocess=True`` does): boxes scaled, ROI masks pasted into full-image masks."""
    from detectron2.modeling.postprocessing import detector_postprocess

    return detector_postprocess(instances, height, width)


def artifact_path(output_dir: str, fmt: str) -> str:
    """``model.onnx`` or ``model.ts`` in ``output_dir``, as detectron2's export tool names them."""
    return os.path.join(output_dir, {"onnx": "model.onnx", "torchscript": "model.ts"}[fmt])

"""Deployment: ONNX export of the op (TorchScript-based and dynamo exporters) checked with ONNX
Runtime against PyTorch and the float64 reference; scripting of the layer; convert_to_native;
whole shapes models exported by tracing (ONNX, TorchScript) and scripting, and a native
TorchScript file loaded by a process without gn_detectron; tools/export_model.py."""
import io
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import gn_detectron
from gn_detectron.export import convert_to_native, onnx_translation_table
from gn_detectron.layers import GroupNorm, convert_group_norm
from gn_detectron.ops import FUSED_ACTIVATIONS, backend_info, group_norm

from _reference import group_norm_reference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_EXTENSION = backend_info()["build"] is not None
needs_extension = pytest.mark.skipif(not HAS_EXTENSION, reason="needs the compiled extension")


class Cast(nn.Module):
    """Runs ``module`` in ``dtype`` on float32 input and returns float32: ONNX Runtime's Python
    API cannot feed or return bfloat16 arrays, so the casts go into the graph."""

    def __init__(self, module, dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x):
        return self.module(x.to(self.dtype)).float()


def make_gn(channels, groups, dtype, affine, relu):
    m = GroupNorm(groups, channels, affine=affine, activation="relu" if relu else None).to(dtype)
    if affine:
        with torch.no_grad():
            m.weight.normal_(1.0, 0.5)
            m.bias.normal_(0.0, 0.5)
    return m.eval()


def run_onnx(model_bytes, x):
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def export_torchscript_based(module, x, opset, dynamic_batch=False):
    f = io.BytesIO()
    dynamic = {"x": {0: "batch"}} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(module, (x,), f, dynamo=False, opset_version=opset, input_names=["x"],
                          dynamic_axes=dynamic)
    return f.getvalue()


def export_dynamo(module, x, opset, dynamic_batch=False, group_normalization=False):
    dynamic = ({0: torch.export.Dim("batch", min=0)},) if dynamic_batch else None
    table = onnx_translation_table(opset, group_normalization=group_normalization)
    with torch.no_grad():
        program = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, verbose=False,
                                    dynamic_shapes=dynamic, custom_translation_table=table)
    return program.model_proto.SerializeToString()


def check_standard_onnx(model_bytes):
    model = onnx.load_from_string(model_bytes)
    onnx.checker.check_model(model)
    domains = {n.domain for n in model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    return [n.op_type for n in model.graph.node]


def layout(x, channels_last):
    if not channels_last:
        return x
    return x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def check_against_pytorch_and_reference(y_onnx, module, x):
    """ONNX Runtime's output against the plugin's (rounding of the output dtype) and against the
    float64 reference (the dtype's precision)."""
    gn, dtype = (module.module, module.dtype) if isinstance(module, Cast) else (module, x.dtype)
    with torch.no_grad():
        y_torch = module(x)
    tol = TOLERANCE[dtype]
    scale = y_torch.abs().max().item()
    assert (y_onnx.double() - y_torch.double()).abs().max().item() <= tol * max(scale, 1.0)
    xin = x.to(dtype)
    ref = group_norm_reference(xin, gn.num_groups, gn.weight, gn.bias, gn.eps, gn.activation == "relu")
    assert (y_onnx.double() - ref).abs().max().item() <= 2 * tol * max(scale, 1.0)


# ------------------------------------------------------------------------------------------------
# The op through the TorchScript-based exporter (registered by `import gn_detectron`).


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine,relu", [(True, True), (False, False), (True, False), (False, True)])
def test_onnx_torchscript_exporter_matches_pytorch(dtype, channels_last, affine, relu):
    gn = make_gn(12, 3, dtype, affine, relu)
    x = layout(torch.randn(2, 12, 5, 7), channels_last)
    if dtype in (torch.float32, torch.float64):
        module, x = gn, x.to(dtype)
    else:
        module = Cast(gn, dtype)
    model_bytes = export_torchscript_based(module, x, opset=17)
    ops = check_standard_onnx(model_bytes)
    assert ("Relu" in ops) == relu
    assert ("InstanceNormalization" in ops) == (dtype != torch.float64)
    check_against_pytorch_and_reference(run_onnx(model_bytes, x), module, x)


@needs_extension
@pytest.mark.parametrize("opset", range(11, 21))
def test_onnx_torchscript_exporter_opsets(opset):
    gn = make_gn(8, 4, torch.float32, True, True)
    x = torch.randn(3, 8, 6, 5)
    model_bytes = export_torchscript_based(gn, x, opset)
    assert onnx.load_from_string(model_bytes).opset_import[0].version == opset
    check_standard_onnx(model_bytes)
    check_against_pytorch_and_reference(run_onnx(model_bytes, x), gn, x)


@needs_extension
@pytest.mark.parametrize("shape", [(2, 6, 9), (2, 6, 3, 4, 5), (1, 6, 1, 1)])
def test_onnx_torchscript_exporter_other_ranks(shape):
    gn = make_gn(6, 2, torch.float32, True, True)
    x = torch.randn(shape)
    model_bytes = export_torchscript_based(gn, x, 17)
    check_against_pytorch_and_reference(run_onnx(model_bytes, x), gn, x)


@needs_extension
@pytest.mark.parametrize("exporter,opset", [("torchscript", 11), ("torchscript", 17), ("torchscript", 20),
                                            pytest.param("dynamo", 18, marks=pytest.mark.slow)])
def test_onnx_empty_batch(exporter, opset):
    """The mask head of an image without detections gets (0, C, 14, 14): the exported graph
    runs on it (PyTorch's own group_norm symbolic reshapes to (0, G, -1), which ONNX Runtime
    rejects for an empty tensor)."""
    gn = make_gn(8, 4, torch.float32, True, True)
    export = export_torchscript_based if exporter == "torchscript" else export_dynamo
    model_bytes = export(gn, torch.randn(3, 8, 5, 5), opset, dynamic_batch=True)
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    for n in (0, 2):
        x = torch.randn(n, 8, 5, 5)
        (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(y), gn(x), atol=1e-5, rtol=1e-5)


@needs_extension
def test_onnx_half_input_with_float32_parameters():
    """AMP leaves fp32 parameters beside fp16 activations: the graph casts them."""
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.gn = make_gn(8, 2, torch.float32, True, True)

        def forward(self, x):
            return group_norm(x.half(), 2, self.gn.weight, self.gn.bias, activation="relu").float()

    module, x = Half(), torch.randn(2, 8, 4, 4)
    model_bytes = export_torchscript_based(module, x, 17)
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(run_onnx(model_bytes, x), expected, atol=2e-3, rtol=2e-3)


@needs_extension
def test_onnx_bfloat16_needs_opset_13():
    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(Exception, match="bfloat16 from opset 13"):
        export_torchscript_based(Cast(make_gn(8, 2, torch.bfloat16, True, False), torch.bfloat16), x, 11)


# ------------------------------------------------------------------------------------------------
# The op through the dynamo-based exporter (custom_translation_table).


@needs_extension
@pytest.mark.slow
@pytest.mark.parametrize("opset,group_normalization,dtype,channels_last,affine,relu", [
    (18, False, torch.float32, False, True, True),
    (18, False, torch.float16, True, True, True),
    (18, False, torch.float64, False, True, False),
    (21, True, torch.float32, True, False, False),
    (21, True, torch.float16, False, True, True),
])
def test_onnx_dynamo_exporter_matches_pytorch(opset, group_normalization, dtype, channels_last, affine, relu):
    gn = make_gn(12, 3, dtype, affine, relu)
    x = layout(torch.randn(2, 12, 5, 7), channels_last).to(dtype)
    model_bytes = export_dynamo(gn, x, opset, group_normalization=group_normalization)
    ops = check_standard_onnx(model_bytes)
    assert ("Relu" in ops) == relu
    if dtype != torch.float64:
        assert ("GroupNormalization" in ops) == group_normalization
        assert ("InstanceNormalization" in ops) == (not group_normalization)
    check_against_pytorch_and_reference(run_onnx(model_bytes, x), gn, x)


@needs_extension
def test_onnx_dynamo_translation_table_rejects_old_opsets():
    with pytest.raises(ValueError, match="dynamo=False"):
        onnx_translation_table(17)
    with pytest.raises(ValueError, match="opset 21 and later"):
        onnx_translation_table(20, group_normalization=True)


# ------------------------------------------------------------------------------------------------
# TorchScript and convert_to_native on layers.


@pytest.mark.parametrize("activation,affine", [("relu", True), (None, False), ("none", True)])
def test_group_norm_layer_scripts(activation, affine):
    m = GroupNorm(4, 8, affine=affine, activation=activation)
    scripted = torch.jit.script(m)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(scripted(x), m(x), atol=0, rtol=0)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.jit.load(buf)(x.to(memory_format=torch.channels_last)),
                               m(x.to(memory_format=torch.channels_last)), atol=0, rtol=0)


def test_scripted_group_norm_reports_bad_input():
    f = torch.jit.script(group_norm)
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(Exception, match="divisible by num_groups, got C=8 channels and num_groups=3"):
        f(x, 3)
    with pytest.raises(Exception, match="unknown activation 'gelu'; expected one of None, 'none', 'relu'"):
        f(x, 4, activation="gelu")
    with pytest.raises(Exception, match=r"expected weight of shape \(8,\)"):
        f(x, 4, torch.ones(4))
    # The scripted message lists the same names as the eager one.
    assert ", ".join(repr(k) for k in FUSED_ACTIVATIONS) == "None, 'none', 'relu'"


def _d2_conv_net():
    from detectron2.layers import Conv2d

    return nn.Sequential(
        Conv2d(3, 8, 3, padding=1, bias=False, norm=nn.GroupNorm(2, 8), activation=nn.ReLU()),
        Conv2d(8, 8, 3, padding=1, bias=False, norm=nn.GroupNorm(4, 8)),
        nn.GroupNorm(2, 8),
    )


def test_convert_to_native_inverts_convert_group_norm():
    pytest.importorskip("detectron2")
    net = _d2_conv_net().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = net(x)
    keys = list(net.state_dict())
    plugin = convert_group_norm(net)
    assert plugin[0].norm.activation == "relu" and plugin[0].activation is None  # fused
    native = convert_to_native(plugin)
    assert not any(isinstance(m, GroupNorm) for m in native.modules())
    assert sum(type(m) is nn.GroupNorm for m in native.modules()) == 3
    assert isinstance(native[0].activation, nn.ReLU) and native[1].activation is None
    assert list(native.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(native(x), expected, atol=1e-5, rtol=1e-5)


def test_convert_to_native_elsewhere_fused_relu_and_root():
    gn = make_gn(8, 2, torch.float32, True, True).train()
    net = nn.Sequential(nn.Conv2d(3, 8, 1), gn)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        expected = net(x)
    native = convert_to_native(net)
    assert isinstance(native[1], nn.Sequential) and type(native[1][0]) is nn.GroupNorm
    assert native[1][0].weight is gn.weight and native[1][0].training  # shared, mode kept
    with torch.no_grad():
        torch.testing.assert_close(native(x), expected, atol=1e-5, rtol=1e-5)
    root = convert_to_native(GroupNorm(2, 8, affine=False))
    assert type(root) is nn.GroupNorm and not root.affine


# ------------------------------------------------------------------------------------------------
# Whole shapes models (tiny variant, random weights).

TINY = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.CONV_DIM", "64",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
        # Random weights score everything near 1/7: keep every detection so that there are some.
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
CONFIG = os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml")


@pytest.fixture(scope="module")
def shapes_model():
    pytest.importorskip("detectron2")
    from detectron2.config import get_cfg

    from gn_detectron import add_gn_config, build_model

    cfg = get_cfg()
    add_gn_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert sum(isinstance(m, GroupNorm) and m.activation == "relu" for m in model.modules()) > 0
    image = torch.rand(3, 128, 160) * 255
    with torch.no_grad():
        reference = model.inference([{"image": image}], do_postprocess=False)[0]
    assert len(reference) == 20  # TEST.DETECTIONS_PER_IMAGE
    return cfg, model, image, reference


def assert_same_detections(reference, other, boxes_px=1e-2, scores=1e-4):
    from gn_detectron.export.detection import instance_differences

    diff = instance_differences(reference, other)
    assert diff["count"][0] == diff["count"][1], diff
    assert diff["boxes_px"] <= boxes_px and diff["scores"] <= scores and diff["classes_differ"] == 0, diff
    assert diff["masks"] <= 1e-4, diff
    return diff


@pytest.fixture(scope="module")
def traced_files(shapes_model, tmp_path_factory):
    """The shapes model traced to TorchScript as it is (plugin.ts) and after convert_to_native
    (native.ts), with their adapters."""
    import copy

    from gn_detectron.export import detection as D

    _, model, image, _ = shapes_model
    folder = tmp_path_factory.mktemp("traced")
    plugin = D.tracing_adapter(model, image)
    D.trace_torchscript(plugin, image, str(folder / "plugin.ts"))
    native_model = convert_to_native(copy.deepcopy(model))
    assert not any(isinstance(m, GroupNorm) for m in native_model.modules())
    native = D.tracing_adapter(native_model, image)
    D.trace_torchscript(native, image, str(folder / "native.ts"))
    return folder, plugin, native


@needs_extension
@pytest.mark.slow
def test_shapes_model_traced_torchscript(shapes_model, traced_files):
    from gn_detectron.export import detection as D

    _, _, image, reference = shapes_model
    folder, adapter, _ = traced_files
    loaded = torch.jit.load(str(folder / "plugin.ts"))
    assert "gn_detectron::group_norm_fwd" in str(loaded.inlined_graph)  # the plugin's kernels
    assert_same_detections(reference, D.run_exported(loaded, adapter, image), boxes_px=0, scores=0)


@needs_extension
@pytest.mark.slow
def test_shapes_model_scripted_with_fused_relu(shapes_model, tmp_path):
    from gn_detectron.export import detection as D

    _, model, image, reference = shapes_model
    D.script_torchscript(model, str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    fields = loaded(({"image": image},))[0]
    assert_same_detections(reference, D.instances_from_fields(fields, reference.image_size), boxes_px=0, scores=0)


@needs_extension
@pytest.mark.slow
def test_native_torchscript_loads_without_gn_detectron(shapes_model, traced_files):
    """A plugin model traced as it is needs gn_detectron where it is loaded; after
    convert_to_native the file loads and runs with torch and torchvision alone."""
    _, _, image, reference = shapes_model
    folder, _, adapter = traced_files
    torch.save(image, folder / "image.pt")
    script = (
        "import sys, torch, torchvision\n"
        "image = torch.load(sys.argv[1] + '/image.pt')\n"
        "try:\n"
        "    torch.jit.load(sys.argv[1] + '/plugin.ts')\n"
        "    print('plugin file loaded')\n"
        "except RuntimeError as e:\n"
        "    print('plugin file failed:', ' '.join(str(e).split()))\n"
        "with torch.no_grad():\n"
        "    outputs = torch.jit.load(sys.argv[1] + '/native.ts')(image)\n"
        "torch.save(list(outputs), sys.argv[1] + '/outputs.pt')\n"
        "assert not any(m.startswith('gn_detectron') for m in sys.modules), 'gn_detectron was imported'\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True,
                         env=env, cwd=str(folder), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "plugin file failed: Unknown builtin op: gn_detectron::group_norm_fwd" in out.stdout, out.stdout
    outputs = tuple(torch.load(folder / "outputs.pt"))
    assert_same_detections(reference, adapter.outputs_schema(outputs)[0]["instances"])


@needs_extension
@pytest.mark.slow
def test_shapes_backbone_dynamo_export(shapes_model):
    """torch.export handles the backbone (not the whole Mask R-CNN: detectron2's data-dependent
    shapes): its FPN features through the dynamo exporter, as GroupNormalization of opset 21."""
    _, model, image, _ = shapes_model
    x = ((image - model.pixel_mean) / model.pixel_std)[None]

    class Backbone(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            features = self.backbone(x)
            return tuple(features[k] for k in sorted(features))

    module = Backbone(model.backbone).eval()
    model_bytes = export_dynamo(module, x, 21, group_normalization=True)
    ops = check_standard_onnx(model_bytes)
    assert "GroupNormalization" in ops and "Relu" in ops
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = module(x)
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)


@needs_extension
@pytest.mark.slow
def test_export_model_tool_onnx(shapes_model, tmp_path):
    """tools/export_model.py on a saved checkpoint and a sample image: ONNX Runtime's detections
    equal PyTorch's (boxes within 1e-2 px, scores within 1e-4, same classes)."""
    import cv2

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import export_model
    finally:
        sys.path.pop(0)
    _, model, image, _ = shapes_model
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    cv2.imwrite(str(tmp_path / "sample.png"), image.permute(1, 2, 0).numpy().astype("uint8"))
    diff = export_model.main(["--config-file", CONFIG, "--format", "onnx", "--export-method", "tracing",
                              "--sample-image", str(tmp_path / "sample.png"), "--output", str(tmp_path / "out")]
                             + TINY + ["MODEL.WEIGHTS", str(tmp_path / "model.pth")])
    model_bytes = (tmp_path / "out" / "model.onnx").read_bytes()
    check_standard_onnx(model_bytes)
    graph = onnx.load_from_string(model_bytes).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]
    assert diff["count"][0] == diff["count"][1] > 0
    assert diff["boxes_px"] <= 1e-2 and diff["scores"] <= 1e-4 and diff["classes_differ"] == 0, diff


def test_export_model_tool_rejects_bad_flag_combinations(capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import export_model
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit):
        export_model.parse_args(["--config-file", CONFIG, "--format", "onnx", "--export-method", "scripting",
                                 "--output", "x"])
    assert "use --format torchscript" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_model.parse_args(["--config-file", CONFIG, "--format", "onnx", "--native", "--output", "x"])
    assert "--native is for TorchScript files" in capsys.readouterr().err


def test_package_exports_convert_to_native():
    assert gn_detectron.convert_to_native is convert_to_native

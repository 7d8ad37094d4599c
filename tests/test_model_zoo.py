"""Every model of detectron2's installed model zoo that contains GroupNorm runs with the plugin.

The zoo is enumerated from the configs folder of the installed detectron2 (not a hand-kept list):
every yaml and LazyConfig model config is built (on the meta device: no memory, no
initialisation) and its GroupNorm layers counted. Each GN model is then built twice on the CPU,
``MODEL.GN.IMPL native`` and ``fast``, the fast one loading the native one's weights (strictly:
the same state_dict keys), and on tiny images:

- inference: the backbone features (1e-4 relative) and the output of every GN layer (1e-4
  relative; a fused GN + ReLU against ReLU of the native GN) agree, and the predictions come out;
- training, for the cascade, panoptic and deformable models: one step, forward and backward, with
  every loss equal to 1e-3 relative and every GN parameter receiving a gradient. Where the backbone
  has no GN layer (the X-152 cascade model: GN in its box and mask heads only), the backbone is
  frozen for the step: every GN layer still trains, without the CPU cost of the ResNeXt-152
  backward.

Configs whose built models are the same (module tree, parameter shapes, trainable parameters) are
run once, for the first of them; the test log names the others. Smaller settings that do not
change the model keep the test within the CI budget: fewer RPN proposals and RoI samples.
"""
import glob
import os
import time
from collections import OrderedDict

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

import gn_detectron  # noqa: F401  (installs the deformable convolutions where detectron2._C is missing)
from gn_detectron.layers import GroupNorm
from gn_detectron.modeling import GNSpec, apply_gn_spec

from _reference import rel_error

pytestmark = pytest.mark.slow

TRAINED = ("cascade", "panoptic", "dconv")  # config names that also train a step


def zoo_root():
    import detectron2.model_zoo

    return os.path.join(os.path.dirname(detectron2.model_zoo.__file__), "configs")


def zoo_config_files():
    """Relative paths of every model config of the installed zoo: the yaml and .py files, without
    the shared bases (``Base-*.yaml``) and the LazyConfig parts (``common/``)."""
    root = zoo_root()
    paths = glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True)
    paths += glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
    rel = [os.path.relpath(p, root) for p in paths]
    return sorted(p for p in rel if not p.startswith("common" + os.sep) and not os.path.basename(p).startswith("Base-"))


def load_config(rel):
    """The config of zoo file ``rel``: a yacs CfgNode with MODEL.GN, or a LazyConfig."""
    path = os.path.join(zoo_root(), rel)
    if rel.endswith(".yaml"):
        from detectron2.config import get_cfg

        cfg = get_cfg()
        gn_detectron.add_gn_config(cfg)
        cfg.merge_from_file(path)
        return cfg
    from detectron2.config import LazyConfig

    return LazyConfig.load(path)


def shrink(cfg):
    """Fewer proposals, RoI samples and detections: the same modules and parameters, less work."""
    if hasattr(cfg, "MODEL"):  # yacs
        cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
        cfg.TEST.DETECTIONS_PER_IMAGE = 10
        return cfg
    model = cfg.model
    if "proposal_generator" in model and model.proposal_generator is not None:
        model.proposal_generator.pre_nms_topk = (200, 200)
        model.proposal_generator.post_nms_topk = (32, 32)
    if "roi_heads" in model:
        model.roi_heads.batch_size_per_image = 32
    for key, value in (("test_topk_candidates", 200), ("max_detections_per_image", 10)):
        if key in model:
            model[key] = value
    return cfg


def build(cfg, impl, device="cpu"):
    """The model of ``cfg`` with every GroupNorm following ``MODEL.GN.IMPL`` = ``impl``: through
    gn_detectron.build_model for yacs configs, instantiate + apply_gn_spec for LazyConfigs."""
    if hasattr(cfg, "MODEL"):
        cfg = cfg.clone()
        cfg.MODEL.GN.IMPL = impl
        cfg.MODEL.DEVICE = device
        with torch.device(device):
            return gn_detectron.build_model(cfg)
    from detectron2.config import instantiate

    with torch.device(device):
        model = instantiate(cfg.model)
    return apply_gn_spec(model, GNSpec(impl=impl), regroup=False).to(device)  # the layers' own groups


def signature(model):
    """What makes two built models the same: modules, parameter shapes and which ones train."""
    params = tuple((n, tuple(p.shape), p.requires_grad) for n, p in model.named_parameters())
    return repr(model), params


def count_group_norms(model):
    return sum(isinstance(m, nn.GroupNorm) for m in model.modules())


@pytest.fixture(scope="module")
def zoo():
    """{config: number of GN layers} for every zoo config, and {config: error} for those that do
    not build here."""
    counts, failures = OrderedDict(), OrderedDict()
    for rel in zoo_config_files():
        try:
            cfg = load_config(rel)
            counts[rel] = count_group_norms(build(cfg, "native", device="meta"))
        except Exception as e:  # reported and checked by test_every_zoo_config_builds
            failures[rel] = e
    return counts, failures


def test_every_zoo_config_builds(zoo):
    """Every zoo config builds here, the deformable ones included, except those that need a
    package that is not installed; those must not be GN models (their config never names GN)."""
    counts, failures = zoo
    assert len(counts) + len(failures) == len(zoo_config_files()) > 100
    for rel, err in failures.items():
        assert isinstance(err, ModuleNotFoundError), f"{rel} does not build: {err!r}"
        text = open(os.path.join(zoo_root(), rel)).read()
        assert '"GN"' not in text and "GroupNorm" not in text, f"{rel} may be a GN model but does not build: {err!r}"
    gn = [rel for rel, n in counts.items() if n]
    print(f"\n{len(counts)} zoo configs built, {len(gn)} with GroupNorm; not built here: "
          + ", ".join(f"{rel} ({err})" for rel, err in failures.items()))
    # the two strongest GN models of the zoo need deformable convolutions
    assert counts["Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml"] > 0
    assert counts["Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml"] > 0


def _inputs(training, seed=0, n=2, h=64, w=64):
    """Tiny images (BGR, 0-255) with two boxes, their masks and a semantic map each."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n if training else 1):
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        record = {"image": image, "height": h, "width": w}
        if training:
            boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 62.0, 60.0]])
            masks = torch.zeros(2, h, w, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[i, y0:y1, x0:x1] = True
            inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 3]),
                             gt_masks=BitMasks(masks))
            sem = torch.zeros(h, w, dtype=torch.long)
            sem[masks[0]] = 1
            sem[masks[1]] = 2
            record.update(instances=inst, sem_seg=sem)
        batch.append(record)
    return batch


def _randomize(model, seed=0):
    """Gives every GN layer a non-trivial affine transform (the zoo initialises 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm) and m.affine:
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))


def _gn_outputs(model):
    """Hooks that record the output of every GN layer and of the backbone by name; returns
    (dict, handles)."""
    outputs, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.GroupNorm) or name == "backbone":
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: outputs.setdefault(name, []).append(
                    # a copy: detectron2's blocks apply F.relu_ to the GN output in place
                    {k: v.detach().clone() for k, v in out.items()} if isinstance(out, dict)
                    else out.detach().clone())))
    return outputs, handles


def _flatten(out):
    """Tensors of a model's predictions, by name."""
    flat = {}
    for i, record in enumerate(out):
        for key, value in record.items():
            if key == "panoptic_seg":
                value = value[0]
            if isinstance(value, torch.Tensor):
                flat[f"{i}.{key}"] = value
            elif hasattr(value, "get_fields"):
                for field, t in value.get_fields().items():
                    flat[f"{i}.{key}.{field}"] = t.tensor if hasattr(t, "tensor") else t
    return flat


def check_config(rel, cfg):
    """Runs the checks of this module on one zoo config; returns a line for the log."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    native = build(cfg, "native")
    _randomize(native)
    fast = build(cfg, "fast")
    fast.load_state_dict(native.state_dict(), strict=True)
    n_gn = count_group_norms(native)
    n_plugin = sum(isinstance(m, GroupNorm) for m in fast.modules())
    assert n_gn > 0 and n_plugin == n_gn, f"{rel}: {n_plugin} of {n_gn} GN layers on the plugin's kernels"
    assert not any(isinstance(m, GroupNorm) for m in native.modules())
    t_build = time.perf_counter() - t0

    # inference: backbone features, every GN layer, the predictions
    worst = 0.0
    native.eval(), fast.eval()
    batch = _inputs(training=False)
    results = {}
    for key, model in (("native", native), ("fast", fast)):
        outputs, handles = _gn_outputs(model)
        with torch.no_grad():
            predictions = model(batch)
        for h in handles:
            h.remove()
        (features,) = outputs.pop("backbone")
        results[key] = features, outputs, predictions
    (f_nat, gn_nat, p_nat), (f_fast, gn_fast, p_fast) = results["native"], results["fast"]
    assert f_nat.keys() == f_fast.keys()
    for k in f_nat:
        err = rel_error(f_fast[k], f_nat[k])
        assert err < 1e-4, f"{rel}: backbone feature {k} differs by {err:.2e} (relative)"
        worst = max(worst, err)
    assert set(gn_nat) == set(gn_fast)
    fast_modules = dict(fast.named_modules())
    for name in gn_nat:
        assert len(gn_nat[name]) == len(gn_fast[name]), f"{rel}: {name} ran a different number of times"
        for a, b in zip(gn_fast[name], gn_nat[name]):
            if fast_modules[name].activation == "relu":
                b = torch.relu(b)
            err = rel_error(a, b)
            assert err < 1e-4, f"{rel}: GN layer {name} output differs by {err:.2e} (relative)"
            worst = max(worst, err)
    flat = _flatten(p_fast)
    assert flat and set(flat) == set(_flatten(p_nat)), f"{rel}: predictions {sorted(flat)}"
    for key, t in flat.items():
        if t.is_floating_point():
            assert torch.isfinite(t).all(), f"{rel}: non-finite {key}"
    t_infer = time.perf_counter() - t0 - t_build

    # training: one step, equal losses
    line = f"{rel}: {n_gn} GN layers, worst relative difference {worst:.1e}"
    if any(word in rel for word in TRAINED) or any("Deform" in type(m).__name__ for m in native.modules()):
        native.train(), fast.train()
        frozen = count_group_norms(native.backbone) == 0
        losses = {}
        for key, model in (("native", native), ("fast", fast)):
            if frozen:
                model.backbone.requires_grad_(False)
            torch.manual_seed(1)
            with EventStorage():
                loss_dict = model(_inputs(training=True, n=1))
            total = sum(loss_dict.values())
            assert torch.isfinite(total), f"{rel} ({key}): non-finite loss {loss_dict}"
            total.backward()
            losses[key] = {k: v.item() for k, v in loss_dict.items()}
        assert losses["fast"].keys() == losses["native"].keys()
        for k, v in losses["native"].items():
            assert losses["fast"][k] == pytest.approx(v, rel=1e-3, abs=1e-6), f"{rel}: {k} {losses}"
        for name, m in fast.named_modules():
            if isinstance(m, nn.GroupNorm) and m.weight.requires_grad:
                assert m.weight.grad is not None and torch.isfinite(m.weight.grad).all(), f"{rel}: {name}"
        line += (f"; trained a step ({len(losses['native'])} losses equal to 1e-3"
                 + (", backbone frozen)" if frozen else ")"))
    return line + f"; {time.perf_counter() - t0:.1f} s (build {t_build:.1f}, inference {t_infer:.1f})"


def test_every_gn_model_of_the_zoo_runs_with_the_plugin(zoo):
    counts, _ = zoo
    gn_configs = [rel for rel, n in counts.items() if n]
    assert len(gn_configs) >= 9
    seen, lines, failures = {}, [], []
    only = os.environ.get("GN_ZOO_ONLY")  # a substring, to run a part while developing
    print()
    for rel in gn_configs:
        if only and only not in rel:
            continue
        cfg = shrink(load_config(rel))
        sig = signature(build(cfg, "native", device="meta"))
        if sig in seen:
            lines.append(f"{rel}: the same model as {seen[sig]}")
        else:
            seen[sig] = rel
            try:
                lines.append(check_config(rel, cfg))
            except Exception as e:
                failures.append(f"{rel}: {type(e).__name__}: {e}")
                lines.append(f"{rel}: FAILED")
        print(lines[-1], flush=True)
    assert not failures, "\n".join(failures)

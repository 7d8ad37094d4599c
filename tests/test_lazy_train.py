"""LazyConfig training through tools/train_net.py (gn_detectron.engine.lazy): the shapes LazyConfig
is the yacs demo model, the plugin's GN is applied to the instantiated model, overrides are
checked, and a tiny run trains, evaluates, resumes and evaluates only, with the yacs path's outputs."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("detectron2")
from detectron2.config import get_cfg  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import gn_detectron  # noqa: E402
from gn_detectron.engine.lazy import build_lazy_model, load_lazy_config  # noqa: E402
from gn_detectron.layers import GroupNorm  # noqa: E402
from gn_detectron.layers.weight_standardization import is_weight_standardized  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
LAZY = os.path.join(ROOT, "configs", "lazy", "shapes_mask_rcnn_gn.py")
YAML = os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml")
CPU = ["train.device=cpu"]


def _batch(n=2, h=128, w=160):
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        boxes = torch.tensor([[10.0, 12.0, 70.0, 90.0], [60.0, 30.0, 150.0, 110.0]])
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 4]), gt_masks=BitMasks(masks))
        batch.append({"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "instances": inst,
                      "height": h, "width": w})
    return batch


def _losses(model):
    model.train()
    torch.manual_seed(3)
    with EventStorage():
        return {k: v.item() for k, v in model(_batch()).items()}


def _plugin_layers(model):
    return (sum(isinstance(m, GroupNorm) for m in model.modules()),
            sum(isinstance(m, GroupNorm) and m.activation is not None for m in model.modules()))


def test_shapes_lazy_config_is_the_yacs_demo_model():
    """Same parameter names and shapes, the same GN layers fused, and with the same weights the
    same losses on the same batch."""
    lazy = build_lazy_model(load_lazy_config(LAZY, CPU))
    cfg = get_cfg()
    gn_detectron.add_gn_config(cfg)
    cfg.merge_from_file(YAML)
    cfg.MODEL.DEVICE = "cpu"
    yacs = gn_detectron.build_model(cfg)
    assert {k: v.shape for k, v in lazy.state_dict().items()} == {k: v.shape for k, v in yacs.state_dict().items()}
    n_gn, n_fused = _plugin_layers(lazy)
    assert (n_gn, n_fused) == _plugin_layers(yacs) and n_gn > 20 and n_fused > 10
    lazy.load_state_dict(yacs.state_dict())
    a, b = _losses(lazy), _losses(yacs)
    assert a.keys() == b.keys() and len(a) == 5
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5), (k, a, b)


def test_gn_node_and_overrides():
    native = build_lazy_model(load_lazy_config(LAZY, CPU + ["gn.impl=native"]))
    assert _plugin_layers(native) == (0, 0)
    norms = [m for m in native.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {32}  # the layers' own groups: no gn.num_groups
    regrouped = build_lazy_model(load_lazy_config(LAZY, CPU + ["+gn.num_groups=16", "gn.weight_standardization=true"]))
    norms = [m for m in regrouped.modules() if isinstance(m, nn.GroupNorm)]
    assert {m.num_groups for m in norms} == {16} and all(isinstance(m, GroupNorm) for m in norms)
    assert sum(is_weight_standardized(m) for m in regrouped.modules()) == len(norms)
    with pytest.raises(KeyError, match="unknown key.*'impls'"):
        build_lazy_model(load_lazy_config(LAZY, CPU + ["+gn.impls=native"]))


def test_mistyped_override_key_is_named():
    with pytest.raises(KeyError, match=r"'train.max_iters'.*did you mean train.max_iter"):
        load_lazy_config(LAZY, ["train.max_iters=10"])
    with pytest.raises(KeyError, match=r"'model.roi_heads.num_clases'"):
        load_lazy_config(LAZY, ["model.roi_heads.num_clases=3"])
    cfg = load_lazy_config(LAZY, ["train.max_iter=7", "+train.note=x", "model.roi_heads.num_classes=3"])
    assert cfg.train.max_iter == 7 and cfg.train.note == "x" and cfg.model.roi_heads.box_predictor.num_classes == 3


def test_coco_recipe_builds_fused():
    path = os.path.join(ROOT, "configs", "lazy", "mask_rcnn_R_50_FPN_gn.py")
    cfg = load_lazy_config(path, CPU)
    assert cfg.train.max_iter == 270000 and cfg.dataloader.train.total_batch_size == 16
    model = build_lazy_model(cfg)
    # ResNet-50 (53) + FPN (8) + box head (4) + mask head (4); fused: stem, 2 per block, box head
    # convs, mask head convs
    assert _plugin_layers(model) == (69, 1 + 32 + 4 + 4)
    with pytest.raises(ValueError, match="gn.impl='native'.*norm='GN'"):
        build_lazy_model(load_lazy_config(path, CPU + ["gn.impl=native"]))


# A tiny run: the tiny shapes sets, a few iterations.
TINY = CPU + ["dataloader.train.dataset.names=[shapes_train_tiny]", "dataloader.test.dataset.names=shapes_val_tiny",
              "dataloader.evaluator.dataset_name=shapes_val_tiny", "train.checkpointer.period=2",
              "lr_multiplier.warmup_length=0.25"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("shapes")
    return {**os.environ, "GN_DETECTRON_DATASETS": str(cache), "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def run(args, env, ok=True, flags=()):
    out = subprocess.run([sys.executable, TRAIN_NET, "--config-file", LAZY, *flags] + args, capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    assert (out.returncode == 0) == ok, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    out_dir = tmp_path_factory.mktemp("lazy_run")
    log = run(TINY + ["train.max_iter=4", f"train.output_dir={out_dir}"], env)
    return out_dir, log


def _iterations(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
    return [r["iteration"] for r in records if "total_loss" in r]


@pytest.mark.slow
def test_lazy_train_writes_the_yacs_outputs(trained):
    out_dir, log = trained
    files = os.listdir(out_dir)
    assert {"metrics.json", "last_checkpoint", "model_final.pth", "model_0000001.pth", "config.yaml"} <= set(files)
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert (out_dir / "last_checkpoint").read_text() == "model_final.pth"
    assert not [f for f in files if ".tmp" in f]  # atomic checkpoints leave no temporary file
    assert _iterations(out_dir)[-1] == 3
    results = json.loads((out_dir / "results.json").read_text())
    assert set(results) >= {"bbox", "segm"} and "AP" in results["segm"]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert "with a fused ReLU (gn.impl=fast)" in log


@pytest.mark.slow
def test_lazy_resume_and_eval_only(trained, env, tmp_path):
    out_dir, _ = trained
    log = run(TINY + ["train.max_iter=6", f"train.output_dir={out_dir}"], env, flags=["--resume"])
    assert "Starting training from iteration 4" in log
    assert _iterations(out_dir)[-1] == 5
    log = run(TINY + [f"train.init_checkpoint={out_dir / 'model_final.pth'}", f"train.output_dir={tmp_path}"],
              env, flags=["--eval-only"])
    assert "segm" in json.loads((tmp_path / "results.json").read_text())
    assert "Starting training" not in log and not (tmp_path / "model_final.pth").exists()


@pytest.mark.slow
def test_lazy_mistyped_key_on_the_command_line(env, tmp_path):
    log = run(TINY + ["train.max_iters=2", f"train.output_dir={tmp_path}"], env, ok=False)
    assert "train.max_iters" in log and "did you mean train.max_iter" in log

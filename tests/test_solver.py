"""gn_detectron.solver: the optimizer chosen by SOLVER.OPTIMIZER, with detectron2's parameter
groups and gradient clipping."""
import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from gn_detectron.config import add_gn_config
from gn_detectron.layers import GroupNorm
from gn_detectron.solver import OPTIMIZER_REGISTRY, build_optimizer


def make_cfg(**solver):
    cfg = add_gn_config(get_cfg())
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), GroupNorm(4, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))


def test_default_is_detectron2_sgd():
    cfg = make_cfg()
    assert cfg.SOLVER.OPTIMIZER == "SGD"
    optimizer = build_optimizer(cfg, tiny_model())
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == cfg.SOLVER.MOMENTUM
    assert optimizer.defaults["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY


def test_adamw_keeps_detectron2_parameter_groups():
    cfg = make_cfg(OPTIMIZER="AdamW", BASE_LR=1e-3, WEIGHT_DECAY=0.05, WEIGHT_DECAY_NORM=0.0, BETAS=(0.8, 0.99))
    model = tiny_model()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.8, 0.99) and optimizer.defaults["lr"] == 1e-3
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    norm = model[1]
    # The plugin's GroupNorm is a norm layer for WEIGHT_DECAY_NORM; the conv weight gets WEIGHT_DECAY.
    assert decay[id(norm.weight)] == 0.0 and decay[id(norm.bias)] == 0.0
    assert decay[id(model[0].weight)] == 0.05
    assert len(decay) == len(list(model.parameters()))


def test_adamw_step_matches_pytorch():
    cfg = make_cfg(OPTIMIZER="AdamW", BASE_LR=1e-2, WEIGHT_DECAY=0.1, WEIGHT_DECAY_NORM=0.1, BETAS=(0.9, 0.999))
    ours, reference = tiny_model(), tiny_model()
    optimizer = build_optimizer(cfg, ours)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    x = torch.randn(4, 3, 4, 4)
    for _ in range(3):
        for model, opt in ((ours, optimizer), (reference, reference_optimizer)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0].weight, tiny_model()[0].weight)


def test_gradient_clipping_applies():
    cfg = make_cfg(OPTIMIZER="AdamW")
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    optimizer = build_optimizer(cfg, tiny_model())
    assert isinstance(optimizer, torch.optim.AdamW) and type(optimizer) is not torch.optim.AdamW


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER='Adam'.*AdamW, SGD"):
        build_optimizer(make_cfg(OPTIMIZER="Adam"), tiny_model())


def test_registry_lists_both():
    assert {name for name, _ in OPTIMIZER_REGISTRY} >= {"SGD", "AdamW"}

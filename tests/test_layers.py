"""gn_detectron.layers.GroupNorm and convert_group_norm."""
import pytest
import torch
from torch import nn

from gn_detectron import GroupNorm, convert_group_norm


def test_is_a_torch_group_norm_with_same_state_dict():
    native = nn.GroupNorm(8, 32)
    ours = GroupNorm(8, 32)
    assert isinstance(ours, nn.GroupNorm)
    assert list(ours.state_dict()) == list(native.state_dict()) == ["weight", "bias"]
    nn.init.normal_(native.weight)
    nn.init.normal_(native.bias)
    ours.load_state_dict(native.state_dict())
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(ours(x), native(x), rtol=1e-5, atol=1e-5)


def test_fused_relu_and_repr():
    m = GroupNorm(4, 16, activation="relu")
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(m(x), torch.relu(nn.functional.group_norm(x, 4, m.weight, m.bias)))
    assert "activation=relu" in repr(m)


def test_no_affine():
    m = GroupNorm(4, 16, affine=False)
    assert m.weight is None and list(m.state_dict()) == []
    x = torch.randn(2, 16, 3)
    torch.testing.assert_close(m(x), nn.functional.group_norm(x, 4), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_channels=30 is not divisible by num_groups=8"):
        GroupNorm(8, 30)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        GroupNorm(8, 32, activation="swish")


def test_convert_keeps_parameters_and_results():
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.GroupNorm(8, 32), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(32, 16, 1), nn.GroupNorm(4, 16, eps=1e-3)))
    for p in model.parameters():
        nn.init.normal_(p)
    x = torch.randn(2, 3, 9, 9)
    before = model(x)
    keys = list(model.state_dict())
    gn_weight = model[1].weight
    converted = convert_group_norm(model)
    assert converted is model
    assert type(model[1]) is GroupNorm and type(model[3][1]) is GroupNorm
    assert model[3][1].eps == 1e-3 and model[3][1].num_groups == 4
    assert model[1].weight is gn_weight  # shared, not copied
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_convert_a_bare_group_norm():
    m = nn.GroupNorm(2, 4)
    assert type(convert_group_norm(m)) is GroupNorm

"""The norm registry: names to norm-layer factories, configured from ``MODEL.GN``.

Detectron2's ``get_norm`` knows a fixed dict of names (its "GN" is ``nn.GroupNorm(32, C)``).
Here a name maps to a factory ``factory(channels, spec) -> nn.Module`` registered in
``NORM_REGISTRY``; ``norm_factory(cfg, name)`` returns the one-argument callable
(``channels -> module``) that detectron2's layers accept as ``norm=``.

Registered names:
    "GN"        GroupNorm with ``MODEL.GN`` settings, implementation chosen by ``MODEL.GN.IMPL``
    "FastGN"    the plugin's GroupNorm (gn_detectron kernels) whatever ``MODEL.GN.IMPL`` says
    "NativeGN"  ``torch.nn.GroupNorm`` with ``MODEL.GN`` settings
    "", "BN", "SyncBN", "FrozenBN", "LN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N":
                detectron2's own norms, unchanged
"""
import math
from dataclasses import dataclass

from detectron2.utils.registry import Registry
from torch import nn

from ..layers import GroupNorm

__all__ = ["NORM_REGISTRY", "GNSpec", "norm_factory", "GN_IMPLS", "GroupCountMismatch"]

NORM_REGISTRY = Registry("GN_NORM")
NORM_REGISTRY.__doc__ = "Norm-layer factories by name: factory(channels: int, spec: GNSpec) -> nn.Module."

GN_IMPLS = ("fast", "native")


@dataclass(frozen=True)
class GNSpec:
    """The ``MODEL.GN`` settings every GN layer of a model follows."""

    impl: str = "fast"
    num_groups: int = 32
    channels_per_group: int = 0
    eps: float = 1e-5
    fuse_activation: bool = True
    weight_standardization: bool = False

    def __post_init__(self):
        if self.impl not in GN_IMPLS:
            raise ValueError(f"MODEL.GN.IMPL must be one of {GN_IMPLS}, got {self.impl!r}")
        if self.channels_per_group < 0 or (self.channels_per_group == 0 and self.num_groups <= 0):
            raise ValueError(
                "set MODEL.GN.NUM_GROUPS > 0 (or MODEL.GN.CHANNELS_PER_GROUP > 0), got "
                f"NUM_GROUPS={self.num_groups}, CHANNELS_PER_GROUP={self.channels_per_group}"
            )
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"MODEL.GN.EPS must be a finite number >= 0 (the paper uses 1e-5), got {self.eps}")

    @classmethod
    def from_config(cls, cfg) -> "GNSpec":
        """From a yacs config (``MODEL.GN``) or a LazyConfig (its optional top-level ``gn`` node
        with lower-case keys: ``gn.impl``, ``gn.num_groups``, ... ; absent keys take the
        defaults)."""
        if "MODEL" not in cfg:
            return cls.from_lazy_config(cfg)
        if "GN" not in cfg.MODEL:
            return cls()
        g = cfg.MODEL.GN
        return cls(impl=g.IMPL, num_groups=g.NUM_GROUPS, channels_per_group=g.CHANNELS_PER_GROUP,
                   eps=g.EPS, fuse_activation=g.FUSE_ACTIVATION,
                   weight_standardization=g.get("WEIGHT_STANDARDIZATION", False))

    @classmethod
    def from_lazy_config(cls, cfg) -> "GNSpec":
        g = dict(cfg.get("gn", None) or {})
        unknown = sorted(set(g) - set(cls.__dataclass_fields__))
        if unknown:
            raise KeyError(f"unknown key(s) {unknown} in the LazyConfig's gn node; "
                           f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**g)

    def setting(self) -> str:
        if self.channels_per_group > 0:
            return f"MODEL.GN.CHANNELS_PER_GROUP={self.channels_per_group}"
        return f"MODEL.GN.NUM_GROUPS={self.num_groups}"

    def groups_for(self, channels: int) -> int:
        """Number of groups for a layer of ``channels`` channels, or 0 when the setting does not
        fit that layer."""
        if self.channels_per_group > 0:
            if channels % self.channels_per_group:
                return 0
            return channels // self.channels_per_group
        return self.num_groups if channels % self.num_groups == 0 else 0


class GroupCountMismatch(nn.Module):
    """Stands where a GN layer could not be built because its group setting does not divide its
    channels. ``gn_detectron.build_model`` finds it and raises an error naming the layer;
    running it raises the same error."""

    def __init__(self, channels: int, spec: GNSpec):
        super().__init__()
        self.channels, self.spec = channels, spec

    def message(self, name: str = "a norm layer") -> str:
        return (f"{self.spec.setting()} does not divide the {self.channels} channels of {name}: "
                f"choose a group setting that divides the channels of every GN layer")

    def forward(self, x):
        raise ValueError(self.message())


def _register(name):
    """Registers a factory under ``name`` (detectron2's Registry names objects by __name__)."""

    def deco(factory):
        factory.__name__ = name
        NORM_REGISTRY.register(factory)
        return factory

    return deco


def _group_norm(spec: GNSpec, channels: int, impl: str):
    groups = spec.groups_for(channels)
    if groups == 0:
        return GroupCountMismatch(channels, spec)
    if impl == "native":
        return nn.GroupNorm(groups, channels, eps=spec.eps)
    return GroupNorm(groups, channels, eps=spec.eps)


@_register("GN")
def _gn(channels, spec):
    return _group_norm(spec, channels, spec.impl)


@_register("FastGN")
def _fast_gn(channels, spec):
    return _group_norm(spec, channels, "fast")


@_register("NativeGN")
def _native_gn(channels, spec):
    return _group_norm(spec, channels, "native")


def _detectron2_norm(name):
    def factory(channels, spec):
        from detectron2.layers import get_norm

        return get_norm(name, channels)

    return factory


for _name in ("BN", "SyncBN", "FrozenBN", "LN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N"):
    _register(_name)(_detectron2_norm(_name))


def norm_factory(cfg_or_spec, name):
    """Returns ``channels -> nn.Module or None`` for the registered norm ``name``, configured by
    ``cfg_or_spec`` (a detectron2 config with ``MODEL.GN``, or a :class:`GNSpec`). A callable
    ``name`` is returned as it is; "" (no norm) is returned as "", which detectron2's layers read
    as "no norm, conv with bias"."""
    if callable(name) or name in (None, ""):
        return name
    spec = cfg_or_spec if isinstance(cfg_or_spec, GNSpec) else GNSpec.from_config(cfg_or_spec)
    if name not in NORM_REGISTRY:
        names = ", ".join(sorted(k for k, _ in NORM_REGISTRY))
        raise KeyError(f"unknown norm {name!r}; registered norms: {names}")
    factory = NORM_REGISTRY.get(name)
    return lambda channels: factory(channels, spec)

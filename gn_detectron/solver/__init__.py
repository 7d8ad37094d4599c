from .optimizer import OPTIMIZER_REGISTRY, build_optimizer

__all__ = ["OPTIMIZER_REGISTRY", "build_optimizer"]

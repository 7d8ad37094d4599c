#!/usr/bin/env python
"""Host-side cost of one group_norm call (forward, and forward+backward) on tiny tensors, where
the GPU work is negligible and the time is the Python/C++ dispatch and launch overhead; plugin
against PyTorch, measured side by side. Prints microseconds per call."""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gn_detectron.ops import group_norm  # noqa: E402


def per_call_us(fn, n=300):
    for _ in range(20):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(2, 256, 8, 8, device=device)
    w = torch.ones(256, device=device, requires_grad=True)
    b = torch.zeros(256, device=device, requires_grad=True)
    xg = x.clone().requires_grad_()
    cases = {
        "plugin fwd": lambda: group_norm(x, 32, w.detach(), b.detach()),
        "torch fwd": lambda: F.group_norm(x, 32, w.detach(), b.detach()),
        "plugin fwd+bwd": lambda: group_norm(xg, 32, w, b).sum().backward(),
        "torch fwd+bwd": lambda: F.group_norm(xg, 32, w, b).sum().backward(),
        "plugin relu fwd+bwd": lambda: group_norm(xg, 32, w, b, activation="relu").sum().backward(),
        "torch gn+relu fwd+bwd": lambda: torch.relu(F.group_norm(xg, 32, w, b)).sum().backward(),
    }
    print(f"# host overhead per call, {device}, torch {torch.__version__}, tensor (2,256,8,8)")
    for name, fn in cases.items():
        print(f"{name:>24}: {per_call_us(fn):8.1f} us")


if __name__ == "__main__":
    main()

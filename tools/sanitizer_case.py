#!/usr/bin/env python
"""Small group_norm cases for compute-sanitizer (tools/gpu_check.sh): every dtype, both memory
formats, fused ReLU, forward and backward, shapes that hit each kernel path's edges."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gn_detectron.ops import group_norm  # noqa: E402

SHAPES = [(2, 64, 17, 23), (1, 96, 3, 5), (5, 32, 1, 1), (3, 256, 7, 7), (1, 128, 40, 48), (2, 48, 1001)]
for shape in SHAPES:
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for fmt in (torch.contiguous_format, torch.channels_last):
            if fmt == torch.channels_last and len(shape) != 4:
                continue
            x = torch.randn(shape, device="cuda", dtype=dtype).to(memory_format=fmt).requires_grad_()
            w = torch.rand(shape[1], device="cuda", requires_grad=True)
            b = torch.randn(shape[1], device="cuda", requires_grad=True)
            for act in (None, "relu"):
                y = group_norm(x, 16, w, b, activation=act)
                y.backward(torch.randn_like(y))
torch.cuda.synchronize()
print("sanitizer cases ran")

"""``launch``: detectron2's multi-process launcher, also under ``torchrun``, and on the CPU."""
import logging
import os

import torch
import torch.distributed as dist
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["launch", "launched_by_torchrun"]

logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """True when the process was started by ``torchrun`` (or another launcher that sets the
    ``env://`` variables) as one of several workers."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=()):
    """Runs ``main_func(*args)`` in ``num_gpus_per_machine * num_machines`` processes.

    - Started by ``torchrun``: joins the process group it describes (``env://``) and runs here.
    - Otherwise: detectron2's ``launch`` spawns the local processes (NCCL on GPUs; gloo on a
      machine without GPUs, where ``num_gpus_per_machine`` counts CPU processes) and joins them
      to ``dist_url`` ("auto" picks a free local port for a single machine).
    """
    if not launched_by_torchrun():
        return d2_launch(main_func, num_gpus_per_machine, num_machines=num_machines,
                         machine_rank=machine_rank, dist_url=dist_url, args=args)
    has_gpu = torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    dist.init_process_group(backend="nccl" if has_gpu else "gloo", init_method="env://")
    comm.create_local_process_group(local_world_size)
    if has_gpu:
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    try:
        return main_func(*args)
    finally:
        dist.destroy_process_group()

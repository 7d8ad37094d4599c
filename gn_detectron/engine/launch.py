"""``launch``: detectron2's multi-process launcher, also under ``torchrun``, and on the CPU."""
import functools
import logging
import os
import sys

import torch
import torch.distributed as dist

from ..utils.requirements import require_detectron2

require_detectron2("gn_detectron.engine")
from detectron2.engine import launch as d2_launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

__all__ = ["launch", "launched_by_torchrun", "cpu_threads_per_process"]

logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """True when the process was started by ``torchrun`` (or another launcher that sets the
    ``env://`` variables) as one of several workers."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads_per_process(num_processes: int, environ=os.environ):
    """Intra-op threads for each of ``num_processes`` CPU training processes on one machine:
    ``OMP_NUM_THREADS`` when set, else the available cores divided by the processes (at least
    1), so that the processes do not oversubscribe the cores. Returns ``(threads, reason)``."""
    if environ.get("OMP_NUM_THREADS"):
        value = environ["OMP_NUM_THREADS"]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"OMP_NUM_THREADS={value!r}: set it to a positive integer, or unset it")
        return int(value), f"OMP_NUM_THREADS={value}"
    cores = available_cores()
    return max(1, cores // num_processes), f"{cores} cores / {num_processes} processes; OMP_NUM_THREADS overrides"


def _run_with_threads(threads, main_func, *args):
    torch.set_num_threads(threads)
    return main_func(*args)


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=()):
    """Runs ``main_func(*args)`` in ``num_gpus_per_machine * num_machines`` processes.

    - Started by ``torchrun``: joins the process group it describes (``env://``) and runs here.
    - Otherwise: detectron2's ``launch`` spawns the local processes (NCCL on GPUs; gloo on a
      machine without GPUs, where ``num_gpus_per_machine`` counts CPU processes, each with
      :func:`cpu_threads_per_process` intra-op threads) and joins them to ``dist_url`` ("auto"
      picks a free local port for a single machine).
    """
    if not launched_by_torchrun():
        if num_gpus_per_machine > 1 and not torch.cuda.is_available():
            threads, reason = cpu_threads_per_process(num_gpus_per_machine)
            # Logging is set up inside the processes, later: this line goes to stderr directly.
            print(f"[gn_detectron] CPU training in {num_gpus_per_machine} processes, {threads} intra-op "
                  f"thread(s) each ({reason})", file=sys.stderr, flush=True)
            main_func = functools.partial(_run_with_threads, threads, main_func)
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

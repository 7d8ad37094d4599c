"""Training hooks: detectron2's periodic checkpointer that keeps a chosen number of checkpoints."""
from detectron2.engine import hooks

__all__ = ["PeriodicCheckpointer", "keep_periodic_checkpoints"]


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's ``PeriodicCheckpointer`` (``model_{iter:07d}.pth`` every ``period``
    iterations, ``model_final.pth`` at the end) that keeps at most ``max_to_keep`` of the periodic
    checkpoints written by this run once training ends.

    ``max_to_keep``: None or negative keeps every one (detectron2's behaviour); N >= 0 keeps the
    latest N besides ``model_final.pth``. While training runs the latest periodic checkpoint is
    always kept (``--resume`` continues from it), so 0 means: only ``model_final.pth`` (and
    ``last_checkpoint``, which names it) remain at the end. Checkpoints of earlier runs in the same
    directory are not touched.
    """

    def __init__(self, checkpointer, period, max_iter=None, max_to_keep=None, file_prefix="model"):
        keep = None if max_to_keep is None or max_to_keep < 0 else int(max_to_keep)
        super().__init__(checkpointer, period, max_iter=max_iter,
                         max_to_keep=None if keep is None else max(keep, 1), file_prefix=file_prefix)
        self.keep_at_end = keep

    def step(self, iteration, **kwargs):
        super().step(iteration, **kwargs)
        if self.keep_at_end is None or self.max_iter is None or int(iteration) < self.max_iter - 1:
            return
        final = f"{self.file_prefix}_final.pth"
        while len(self.recent_checkpoints) > self.keep_at_end:
            path = self.recent_checkpoints.pop(0)
            if not path.endswith(final) and self.path_manager.exists(path):
                self.path_manager.rm(path)


def keep_periodic_checkpoints(hook_list, max_to_keep):
    """``hook_list`` with detectron2's ``PeriodicCheckpointer`` replaced by the one above, keeping
    ``max_to_keep`` periodic checkpoints (``SOLVER.CHECKPOINT_MAX_TO_KEEP``; -1 keeps all)."""
    out = []
    for h in hook_list:
        if type(h) is hooks.PeriodicCheckpointer:
            h = PeriodicCheckpointer(h.checkpointer, h.period, max_iter=h.max_iter,
                                     max_to_keep=max_to_keep, file_prefix=h.file_prefix)
        out.append(h)
    return out

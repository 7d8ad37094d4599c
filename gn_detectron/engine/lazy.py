"""Training and evaluation of LazyConfigs (``.py`` configs), with the plugin's GroupNorm.

The semantics of detectron2's ``tools/lazyconfig_train_net.py``: the config's ``model``,
``dataloader.{train,test,evaluator}``, ``optimizer``, ``lr_multiplier`` and ``train.*`` keys
(``output_dir``, ``init_checkpoint``, ``max_iter``, ``amp.enabled``, ``ddp``, ``checkpointer``,
``eval_period``, ``log_period``, ``device``, ``seed``), ``key=value`` overrides, ``--resume`` and
``--eval-only``. Beyond it:

- the instantiated model follows the config's optional ``gn`` node (``gn.impl``,
  ``gn.num_groups`` / ``gn.channels_per_group``, ``gn.eps``, ``gn.fuse_activation``,
  ``gn.weight_standardization``; see :class:`gn_detectron.modeling.GNSpec`): every
  ``torch.nn.GroupNorm`` becomes the plugin's, GN + ReLU pairs fused, as in the yacs path. The
  layers keep their own group counts and eps unless the ``gn`` node sets them;
- the outputs of the yacs path: ``metrics.json``, TensorBoard events, atomic checkpoints
  (:class:`GNCheckpointer`, which also reads Detectron pickles safely) and ``results.json``;
- an override of a key the config does not have fails, naming the key (``+key=value`` adds one);
- CPU multi-process training (gloo) and the CPU when ``train.device`` is "cuda" without a GPU.
"""
import difflib
import logging

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint.checkpointer import GNCheckpointer, remove_stale_temporaries
from ..layers import GroupNorm
from ..modeling import GNSpec, apply_gn_spec
from .output_dir import lock_output_dir
from .trainer import write_results

__all__ = ["load_lazy_config", "apply_overrides", "build_lazy_model", "do_test", "do_train", "main"]

logger = logging.getLogger(__name__)

_REGROUP_KEYS = ("num_groups", "channels_per_group", "eps")


def _has_key(cfg, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not OmegaConf.is_config(node) or part not in node:
            return False
        node = node[part]
    return True


def _all_keys(cfg, prefix=""):
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        yield path
        if OmegaConf.is_dict(v):
            yield from _all_keys(v, path + ".")


def apply_overrides(cfg, overrides):
    """detectron2's ``LazyConfig.apply_overrides`` (hydra syntax ``key=value``), after checking
    that every overridden key exists: a mistyped key raises KeyError naming it and the closest
    keys of the config. ``+key=value`` adds a new key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if o.is_add() or _has_key(cfg, key):
            continue
        close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=2, cutoff=0.8)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise KeyError(f"override {key!r}: the config has no key {key!r}{hint} (to add a new key, "
                       f"write +{key}=...)")
    return LazyConfig.apply_overrides(cfg, list(overrides))


def load_lazy_config(config_file, overrides=()):
    """The LazyConfig of ``config_file`` with ``overrides`` applied; ``train.device`` "cuda"
    becomes "cpu" where there is no GPU (logged later by :func:`main`)."""
    cfg = LazyConfig.load(config_file)
    cfg = apply_overrides(cfg, overrides)
    if "train" in cfg and str(cfg.train.get("device", "cpu")).startswith("cuda") and not torch.cuda.is_available():
        cfg.train.device = "cpu"
    return cfg


def build_lazy_model(cfg):
    """``instantiate(cfg.model)`` with the plugin's GN applied (``cfg.gn``, see module doc), on
    ``cfg.train.device``."""
    spec = GNSpec.from_config(cfg)
    model = instantiate(cfg.model)
    if spec.impl == "native" and any(isinstance(m, GroupNorm) for m in model.modules()):
        raise ValueError("gn.impl='native', but the config builds gn_detectron.layers.GroupNorm layers "
                         "directly (a norm= callable): use norm='GN' in the config for a choice of "
                         "implementation, or gn.impl='fast'")
    gn = cfg.get("gn", None) or {}
    model = apply_gn_spec(model, spec, regroup=any(k in gn for k in _REGROUP_KEYS))
    n_gn = sum(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    n_fast = sum(isinstance(m, GroupNorm) for m in model.modules())
    n_fused = sum(isinstance(m, GroupNorm) and m.activation is not None for m in model.modules())
    logger.info(f"gn_detectron: {n_gn} GroupNorm layers, {n_fast} on the plugin's kernels, "
                f"{n_fused} with a fused ReLU (gn.impl={spec.impl})")
    return model.to(torch.device(cfg.train.device))


def create_ddp_model(model, *, fp16_compression=False, **kwargs):
    """DistributedDataParallel over several processes (none for one); on the CPU (gloo) without
    ``device_ids``. ``kwargs`` are ``train.ddp``'s, as in detectron2."""
    if comm.get_world_size() == 1:
        return model
    on_gpu = next(model.parameters()).device.type == "cuda"
    ddp = DistributedDataParallel(model, device_ids=[comm.get_local_rank()] if on_gpu else None, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def do_test(cfg, model):
    """Evaluates ``model`` on ``dataloader.test`` with ``dataloader.evaluator``; prints the table
    and writes ``train.output_dir/results.json``. Returns the results (None without evaluator)."""
    if "evaluator" not in cfg.dataloader:
        return None
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
        if cfg.train.output_dir:
            write_results(cfg.train.output_dir, results)
    return results


def do_train(args, cfg):
    model = build_lazy_model(cfg)
    logging.getLogger("detectron2").info("Model:\n{}".format(model))
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = GNCheckpointer(model, cfg.train.output_dir, optimizer=optimizer, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # the checkpoint holds the iteration that finished: continue at the next one
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def main(args):
    """``tools/train_net.py`` for a ``.py`` config: ``args.config_file``, ``args.opts``
    (``key=value``), ``args.resume``, ``args.eval_only``."""
    from ..data import register_shapes_datasets

    cfg = load_lazy_config(args.config_file, args.opts)
    register_shapes_datasets()
    if comm.is_main_process() and cfg.train.output_dir:
        lock_output_dir(cfg.train.output_dir)  # one run per folder, as on the yacs path
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="gn_detectron", abbrev_name="gn")
    if cfg.train.device == "cpu" and not torch.cuda.is_available():
        logging.getLogger("detectron2").info("No GPU found: train.device is 'cpu'")
    if comm.is_main_process() and cfg.train.output_dir:
        remove_stale_temporaries(cfg.train.output_dir, logging.getLogger("gn_detectron"))
    if args.eval_only:
        model = build_lazy_model(cfg)
        # refuses a model whose weights did not load (nothing given, nothing fits, NaN weights)
        GNCheckpointer(model, save_dir=cfg.train.output_dir).load_for_evaluation(
            cfg.train.init_checkpoint, resume=args.resume)
        return do_test(cfg, create_ddp_model(model))
    do_train(args, cfg)
    return None

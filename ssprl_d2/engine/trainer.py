"""The trainer base of every job: :class:`DefaultTrainer` with the project's checkpointer,
start-up checks, AMP step runners and the hooks all jobs share. The per-job trainers
(:mod:`.jobs`) override only the builders that differ."""
import logging
import weakref
from typing import List

from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, HookBase, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.projects.deeplab import build_lr_scheduler as build_poly_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssprl_d2.checkpoint import SSPRLCheckpointer
from ssprl_d2.solver import build_ssprl_optimizer

from .amp import build_step_runner
from .hooks import SkippedImagesLogger
from .preflight import check_output_dir, checkpoint_bytes

logger = logging.getLogger(__name__)


class SSPRLTrainerBase(DefaultTrainer):
    """:class:`DefaultTrainer` with the project's checkpointer, AMP runners and shared hooks."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ of Detectron2 0.6 / 0.7, except: OUTPUT_DIR checked for one
        # checkpoint's space, the AMP runner from build_step_runner, DDP's find_unused_parameters
        # from the job, and SSPRLCheckpointer (safe loading, per-rank queue state).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        model = self.build_model(cfg)
        if comm.is_main_process():  # only rank 0 writes checkpoints
            check_output_dir(cfg.OUTPUT_DIR, checkpoint_bytes(model))
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_kwargs = {
            "broadcast_buffers": False,
            "find_unused_parameters": self.find_unused_parameters(cfg),
        }
        if not cfg.MODEL.DEVICE.startswith("cuda"):
            ddp_kwargs["device_ids"] = None  # CPU DDP (gloo): no device ids
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = build_step_runner(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SSPRLCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            trust_pickle=cfg.MODEL.WEIGHTS_TRUST_PICKLE,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    @classmethod
    def find_unused_parameters(cls, cfg: CfgNode) -> bool:
        """DDP's ``find_unused_parameters``: True where some parameters get no gradient."""
        return False

    @classmethod
    def train_job(cls, cfg: CfgNode, resume: bool = False):
        """Train ``cfg``'s job (resuming from OUTPUT_DIR with ``resume``); returns the results of
        the final evaluation."""
        trainer = cls(cfg)
        trainer.resume_or_load(resume=resume)
        return trainer.train()

    def resume_or_load(self, resume=True):
        """See :meth:`DefaultTrainer.resume_or_load`; also positions resumable data streams."""
        super().resume_or_load(resume=resume)
        sampler = getattr(self._trainer.data_loader, "ssprl_sampler", None)
        if sampler is not None:
            sampler.set_start_iter(self.start_iter)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # DeepLab's builder: "WarmupPolyLR" (segmentation), else Detectron2's schedulers.
        return build_poly_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_ssprl_optimizer(cfg, model)

    def job_hooks(self) -> List[HookBase]:
        """Hooks of this job, run before the evaluation hook (none by default)."""
        return []

    def build_hooks(self):
        ret = super().build_hooks()
        if comm.get_world_size() > 1 and not comm.is_main_process():
            # SSPRLCheckpointer.save gathers every rank's queues, so every rank calls it (only
            # rank 0 writes); Detectron2 adds the checkpointer hook on rank 0 only, before eval.
            at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
            period = self.cfg.SOLVER.CHECKPOINT_PERIOD
            ret.insert(at, hooks.PeriodicCheckpointer(self.checkpointer, period))
        # The skip count of every job. Its all-gather (and the kNN monitor's) must come at the
        # same place in every rank's hook order: before the EvalHook, which is last on ranks > 0
        # and followed by the writers on rank 0 (so they log this step's values).
        at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
        ret[at:at] = self.job_hooks() + [SkippedImagesLogger()]
        return ret

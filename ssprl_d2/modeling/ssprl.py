"""The SS-PRL pre-training meta-architecture (Hsieh et al. 2022) on a Detectron2 backbone."""
import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from ssprl_d2.config.choices import CROSS_INPUTS, GROUP_CROPS, check_choice
from ssprl_d2.config.validate import validate_ssprl_config
from ssprl_d2.ops import apply_photometric

from .heads import FeatureQueue, ProjectionHead, UnitRowLinear, per_rank_queue_lengths
from .losses import (
    check_finite_losses,
    cross_scale_loss,
    patch_mean_representation,
    patch_swapped_loss,
    swapped_prediction_loss,
)
from .pyramid_batch import backbone_passes, stack_units
from .sinkhorn import sinkhorn_knopp

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class SSPRL(nn.Module):
    """Self-Supervised Pyramid Representation Learning.

    One shared backbone; one projection head, prototype set and queue per scale (scale 0 = the
    SwAV multi-crop views of the whole image, scale s >= 1 = two views of g_s x g_s patches);
    one cross-scale correlation learner per pyramid scale mapping its patch-mean prototype
    representation to the scale-0 prototype space. Training ``forward`` returns the named terms
    ``loss_pyr_s{s}`` (alpha_s * swapped prediction at scale s) and ``loss_cross_s{s}``
    (lambda * beta_s * cross-scale term).

    Inputs (from :class:`ssprl_d2.data.PyramidDatasetMapper`), one dict per image:
        "crops": list of (3, h, w) uint8 scale-0 crops;
        "patches": one (2, M_s, 3, p_s, p_s) uint8 tensor per pyramid scale;
        "photometric" (optional): (n_crops + sum_s 2 M_s, P) per-crop photometric parameters,
        applied here, batched on the device.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_feature: str,
        num_crops: int,
        grids: Sequence[int],
        num_prototypes: Sequence[int],
        head_hidden_dim: int = 2048,
        head_out_dim: int = 128,
        shared_prototypes: bool = False,
        temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iters: int = 3,
        assign_crops: Sequence[int] = (0, 1),
        alpha: Sequence[float] = (1.0, 0.25, 0.25),
        beta: Sequence[float] = (0.25, 0.25),
        cross_weight: float = 1.0,
        cross_input: str = "probs",
        cross_normalize_input: bool = False,
        use_pyramid_loss: bool = True,
        use_cross_loss: bool = True,
        freeze_prototypes_iters: int = 0,
        queue_lengths: Sequence[int] = (),
        queue_start_iter: int = 0,
        pixel_mean: Sequence[float] = (123.675, 116.280, 103.530),
        pixel_std: Sequence[float] = (58.395, 57.120, 57.375),
        group_crops: str = "resolution",
        check_finite: bool = True,
        channels_last: bool = False,
        compile_backend: str = "",
    ):
        """
        Args:
            backbone: a Detectron2 backbone producing ``in_feature``.
            in_feature: name of the feature map that is average-pooled (e.g. "res5").
            num_crops: number of scale-0 crops per image.
            grids: g_s of every pyramid scale s >= 1 (M_s = g_s^2 patches).
            num_prototypes: K_s per scale, scale 0 first.
            head_hidden_dim, head_out_dim: projection MLP sizes (hidden 0 = one Linear).
            shared_prototypes: one prototype set for all scales (Table-4 ablation).
            temperature: tau of the softmax predictions.
            sinkhorn_epsilon, sinkhorn_iters: Sinkhorn-Knopp settings.
            assign_crops: scale-0 crops whose codes are the swapped-prediction targets.
            alpha: per-scale weights of L_pyr; beta: per-pyramid-scale weights of L_cross.
            cross_weight: lambda of Eq. 4.
            cross_input: "probs" (paper) or "scores" (release) input of the cross-scale learners.
            cross_normalize_input: L2-normalise the "probs" input of the learners.
            use_pyramid_loss: keep the s >= 1 swapped-prediction terms.
            use_cross_loss: keep the cross-scale terms (and build the learners).
            freeze_prototypes_iters: prototypes and learners get no gradient before this iter.
            queue_lengths: per-rank queue length per scale (0 = none).
            queue_start_iter: iteration at which queues begin filling (used once full).
            pixel_mean, pixel_std: RGB normalisation on the 0-255 scale.
            group_crops: "resolution" = one backbone pass per crop size, "none" = per group.
            check_finite: raise ``FloatingPointError`` naming a non-finite loss term.
            channels_last: run the backbone in channels-last memory format.
            compile_backend: when set, ``torch.compile`` the backbone with this backend
                (``nn.Module.compile``: parameter names and checkpoints are unchanged).
        """
        super().__init__()
        if compile_backend:
            backbone.compile(backend=compile_backend, dynamic=False)
        self.backbone = backbone
        self.in_feature = in_feature
        self.num_crops = num_crops
        self.grids = list(grids)
        self.num_scales = 1 + len(self.grids)
        self.temperature = temperature
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iters = sinkhorn_iters
        self.assign_crops = list(assign_crops)
        self.alpha = list(alpha)
        self.beta = list(beta)
        self.cross_weight = cross_weight
        check_choice("cross_input", cross_input, CROSS_INPUTS)
        check_choice("group_crops", group_crops, GROUP_CROPS)
        self.cross_input = cross_input
        self.cross_normalize_input = cross_normalize_input
        self.use_pyramid_loss = use_pyramid_loss
        self.use_cross_loss = use_cross_loss and cross_weight > 0 and len(self.grids) > 0
        self.freeze_prototypes_iters = freeze_prototypes_iters
        self.queue_start_iter = queue_start_iter
        self.group_crops = group_crops
        self.check_finite = check_finite
        self.channels_last = channels_last
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1), False)
        # Iteration used when no EventStorage is active (unit tests, scripts).
        self.iteration = 0

        in_dim = backbone.output_shape()[in_feature].channels
        self.heads = nn.ModuleList(
            ProjectionHead(in_dim, head_hidden_dim, head_out_dim) for _ in range(self.num_scales)
        )
        if shared_prototypes:
            shared = UnitRowLinear(head_out_dim, num_prototypes[0])
            self.prototypes = nn.ModuleList([shared])
        else:
            self.prototypes = nn.ModuleList(
                UnitRowLinear(head_out_dim, k) for k in num_prototypes
            )
        self.shared_prototypes = shared_prototypes
        self.num_prototypes = list(num_prototypes)
        if self.use_cross_loss:
            self.cross_learners = nn.ModuleList(
                UnitRowLinear(num_prototypes[s], num_prototypes[0])
                for s in range(1, self.num_scales)
            )
        lengths = list(queue_lengths) or [0] * self.num_scales
        self.queues = nn.ModuleList(
            FeatureQueue(len(self.assign_crops) if s == 0 else 2, lengths[s], head_out_dim)
            for s in range(self.num_scales)
        )
        self._normalize_prototypes()

    @classmethod
    def from_config(cls, cfg: CfgNode):
        validate_ssprl_config(cfg)
        c = cfg.MODEL.SSPRL
        grids = list(cfg.INPUT.SSPRL.GRIDS)
        lengths = per_rank_queue_lengths(
            c.QUEUE.LENGTHS, cfg.SOLVER.IMS_PER_BATCH, grids, comm.get_world_size()
        )
        return {
            "backbone": build_backbone(cfg),
            "in_feature": c.IN_FEATURE,
            "num_crops": sum(cfg.INPUT.SSPRL.NUM_CROPS),
            "grids": grids,
            "num_prototypes": list(c.NUM_PROTOTYPES),
            "head_hidden_dim": c.HEAD_HIDDEN_DIM,
            "head_out_dim": c.HEAD_OUT_DIM,
            "shared_prototypes": c.SHARED_PROTOTYPES,
            "temperature": c.TEMPERATURE,
            "sinkhorn_epsilon": c.SINKHORN_EPSILON,
            "sinkhorn_iters": c.SINKHORN_ITERS,
            "assign_crops": list(c.ASSIGN_CROPS),
            "alpha": list(c.ALPHA),
            "beta": list(c.BETA),
            "cross_weight": c.CROSS_WEIGHT,
            "cross_input": c.CROSS_INPUT,
            "cross_normalize_input": c.CROSS_NORMALIZE_INPUT,
            "use_pyramid_loss": c.USE_PYRAMID_LOSS,
            "use_cross_loss": c.USE_CROSS_LOSS,
            "freeze_prototypes_iters": c.FREEZE_PROTOTYPES_ITERS,
            "queue_lengths": lengths,
            "queue_start_iter": c.QUEUE.START_ITER,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "group_crops": c.GROUP_CROPS,
            "check_finite": c.CHECK_FINITE_LOSS,
            "channels_last": c.CHANNELS_LAST,
            "compile_backend": c.COMPILE_BACKEND if c.COMPILE else "",
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ helpers
    def _prototypes(self, scale: int) -> UnitRowLinear:
        return self.prototypes[0 if self.shared_prototypes else scale]

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        for proto in self.prototypes:
            proto.normalize_()
        if self.use_cross_loss:
            for learner in self.cross_learners:
                learner.normalize_()

    def _current_iter(self) -> int:
        try:
            return get_event_storage().iter
        except AssertionError:
            return self.iteration

    def _embed_units(self, units: List[torch.Tensor], params) -> List[torch.Tensor]:
        """Pooled backbone features of every unit, one backbone pass per resolution group."""
        feats: List[Optional[torch.Tensor]] = [None] * len(units)
        for idx in backbone_passes(units, self.group_crops):
            x = torch.cat([units[i] for i in idx]).to(self.device, non_blocking=True)
            # Augmentation and normalisation stay in float32 under AMP.
            with torch.autocast(device_type=self.device.type, enabled=False):
                x = x.float().div_(255.0)
                if params is not None:
                    p = torch.cat([params[i] for i in idx]).to(self.device, non_blocking=True)
                    x = apply_photometric(x, p)
                x = (x * 255.0 - self.pixel_mean) / self.pixel_std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            f = self.backbone(x)[self.in_feature]
            f = F.adaptive_avg_pool2d(f, 1).flatten(1)  # (n, C)
            for i, part in zip(idx, f.split([units[i].shape[0] for i in idx])):
                feats[i] = part
        return feats

    def _codes(self, scores: torch.Tensor, queue_scores: Optional[torch.Tensor]) -> torch.Tensor:
        n = scores.shape[0]
        if queue_scores is not None:
            scores = torch.cat([scores, queue_scores])
        return sinkhorn_knopp(scores, self.sinkhorn_epsilon, self.sinkhorn_iters)[:n]

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
        """Training forward; returns the dict of weighted loss terms.

        For embeddings without training, see :meth:`embed`.
        """
        if not self.training:
            return self.embed(batched_inputs)
        it = self._current_iter()
        self._normalize_prototypes()
        frozen = it < self.freeze_prototypes_iters
        queues_on = it >= self.queue_start_iter
        batch = len(batched_inputs)

        units, params = stack_units(batched_inputs, self.num_crops, self.grids)
        feats = self._embed_units(units, params)
        losses: Dict[str, torch.Tensor] = {}

        # ---- scale 0: SwAV multi-crop swapped prediction
        z0 = F.normalize(self.heads[0](torch.cat(feats[: self.num_crops])), dim=1)  # (n*B, D)
        proto0 = self._prototypes(0)
        scores0 = proto0(z0, frozen=frozen).split(batch)  # n x (B, K0)
        queue0 = self.queues[0]
        codes0 = []
        for slot, i in enumerate(self.assign_crops):
            q_scores = None
            if queue0.is_full and queues_on:
                q_scores = proto0(queue0.features[slot], frozen=True)
            codes0.append(self._codes(scores0[i], q_scores))
        losses["loss_pyr_s0"] = self.alpha[0] * swapped_prediction_loss(
            codes0, scores0, self.assign_crops, self.temperature
        )
        z0_views = z0.split(batch)
        new_queue = {0: [z0_views[i] for i in self.assign_crops]}

        # ---- pyramid scales
        for s in range(1, self.num_scales):
            f_a = feats[self.num_crops + 2 * (s - 1)]
            f_b = feats[self.num_crops + 2 * (s - 1) + 1]
            z = F.normalize(self.heads[s](torch.cat([f_a, f_b])), dim=1)  # (2*B*M, D)
            proto = self._prototypes(s)
            scores_a, scores_b = proto(z, frozen=frozen).chunk(2)  # (B*M, K_s) each
            z_a, z_b = z.chunk(2)
            queue = self.queues[s]
            if self.use_pyramid_loss:
                codes = []
                for slot, sc in enumerate((scores_a, scores_b)):
                    q_scores = None
                    if queue.is_full and queues_on:
                        q_scores = proto(queue.features[slot], frozen=True)
                    codes.append(self._codes(sc, q_scores))
                losses[f"loss_pyr_s{s}"] = self.alpha[s] * patch_swapped_loss(
                    codes[0], codes[1], scores_a, scores_b, self.temperature
                )
                new_queue[s] = [z_a, z_b]
            if self.use_cross_loss:
                m = self.grids[s - 1] ** 2
                learner = self.cross_learners[s - 1]
                cross_logits = [
                    learner(
                        patch_mean_representation(
                            sc, m, self.cross_input, self.temperature, self.cross_normalize_input
                        ),
                        frozen=frozen,
                    )
                    for sc in (scores_a, scores_b)
                ]
                losses[f"loss_cross_s{s}"] = (
                    self.cross_weight
                    * self.beta[s - 1]
                    * cross_scale_loss(codes0, cross_logits, self.temperature)
                )

        if self.check_finite:
            check_finite_losses(losses, it)
        if queues_on:
            for s, feats_s in new_queue.items():
                self.queues[s].push(feats_s)
        self._log_state(frozen, queues_on)
        return losses

    def _log_state(self, frozen: bool, queues_on: bool) -> None:
        try:
            storage = get_event_storage()
        except AssertionError:
            return
        storage.put_scalar("ssprl/prototypes_frozen", float(frozen), smoothing_hint=False)
        used = [float(q.is_full and queues_on) for q in self.queues if q.length > 0]
        if used:
            storage.put_scalar("ssprl/queues_in_use", sum(used), smoothing_hint=False)

    @torch.no_grad()
    def embed_views(self, views: torch.Tensor, scale: int) -> torch.Tensor:
        """L2-normalised projections z of already-cut views (no augmentation).

        Args:
            views: (N, 3, h, w) RGB views on the 0-255 scale (any dtype).
            scale: whose projection head to use (0 = image, s >= 1 = pyramid scale s).

        Returns:
            (N, D) float32 unit vectors.
        """
        x = (views.to(self.device).float() - self.pixel_mean) / self.pixel_std
        feats = F.adaptive_avg_pool2d(self.backbone(x)[self.in_feature], 1).flatten(1)  # (N, C)
        return F.normalize(self.heads[scale](feats).float(), dim=1)  # (N, D)

    def prototype_vectors(self, scale: int) -> torch.Tensor:
        """(K_s, D) unit prototype vectors of ``scale`` (detached; the shared set if shared)."""
        return F.normalize(self._prototypes(scale).weight.detach().float(), dim=1)

    @torch.no_grad()
    def embed(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        """Inference: per image, the pooled backbone feature and scale-0 prototype probabilities
        of its first crop, and per pyramid scale the patch prototype probabilities (view 1)."""
        batch = len(batched_inputs)
        units, params = stack_units(batched_inputs, self.num_crops, self.grids)
        feats = self._embed_units(units, params)
        z0 = F.normalize(self.heads[0](feats[0]), dim=1)
        out = [
            {"feature": feats[0][b], "prob_s0": F.softmax(
                self._prototypes(0)(z0[b : b + 1]) / self.temperature, dim=1)[0]}
            for b in range(batch)
        ]
        for s in range(1, self.num_scales):
            m = self.grids[s - 1] ** 2
            z = F.normalize(self.heads[s](feats[self.num_crops + 2 * (s - 1)]), dim=1)
            probs = F.softmax(self._prototypes(s)(z) / self.temperature, dim=1).view(batch, m, -1)
            for b in range(batch):
                out[b][f"prob_s{s}"] = probs[b]
        return out

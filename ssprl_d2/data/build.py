"""Resumable, seeded data loading for SS-PRL pre-training.

Every sample of the infinite training stream is identified by its global stream position n:
the image is ``perm_epoch[n % N]`` and its augmentations come from a generator seeded with
(seed, n). The stream therefore does not depend on the number of data-loader workers, and a run
resumed at iteration t continues with exactly the crops an uninterrupted run would have used.
"""
import logging
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data import build_batch_data_loader, get_detection_dataset_dicts
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

from .pyramid_mapper import PyramidDatasetMapper

logger = logging.getLogger(__name__)

_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, position: int) -> int:
    """A 63-bit seed for stream position ``position`` (splitmix64-style mixing)."""
    z = (seed * _MIX + position + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class ResumableTrainingSampler(Sampler):
    """Infinite stream of (dataset index, stream position) for this rank.

    Rank r takes positions r, r + W, r + 2W, ... (W = world size), so one iteration of the
    global batch G = W * b covers positions [t G, (t + 1) G). :meth:`set_start_iter` skips the
    iterations already trained before a resume.
    """

    def __init__(self, size: int, batch_per_rank: int, seed: int, rank=None, world_size=None):
        if size <= 0:
            raise ValueError("The pre-training dataset is empty.")
        self.size = size
        self.batch_per_rank = batch_per_rank
        self.seed = int(seed)
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        self.start_iter = 0

    def set_start_iter(self, start_iter: int) -> None:
        self.start_iter = int(start_iter)

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(sample_seed(self.seed, -1 - epoch)).permutation(self.size)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        k = self.start_iter * self.batch_per_rank
        epoch, perm = -1, None
        while True:
            n = self.rank + k * self.world_size
            e = n // self.size
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield int(perm[n % self.size]), n
            k += 1


class SeededMapDataset(Dataset):
    """Map (index, position) keys through ``mapper(dict, generator)``; unreadable images are
    replaced by other images drawn from the same seeded generator (and counted by the reader)."""

    def __init__(self, dataset_dicts: List[dict], mapper, seed: int, max_retries: int = 20):
        self.dicts = dataset_dicts
        self.mapper = mapper
        self.seed = seed
        self.max_retries = max_retries

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, key: Tuple[int, int]):
        idx, position = key
        g = torch.Generator().manual_seed(sample_seed(self.seed, position))
        for _ in range(self.max_retries):
            out = self.mapper(self.dicts[idx], g)
            if out is not None:
                return out
            idx = int(torch.randint(len(self.dicts), (), generator=g))
        raise RuntimeError(
            f"{self.max_retries} consecutive images could not be read; the dataset looks broken "
            f"(last: {self.dicts[idx].get('file_name')})."
        )


def _strip(d: dict) -> dict:
    keep = ("file_name", "image_id", "height", "width")
    return {k: d[k] for k in keep if k in d}


def resolve_seed(cfg) -> int:
    seed = cfg.INPUT.SSPRL.SEED if cfg.INPUT.SSPRL.SEED >= 0 else cfg.SEED
    if seed < 0:
        # All ranks must agree: take rank 0's random seed.
        seed = comm.all_gather(int(np.random.SeedSequence().entropy % (2**31)))[0]
    return int(seed)


def build_pretrain_train_loader(cfg, mapper: Optional[PyramidDatasetMapper] = None):
    """The SS-PRL training loader (labels are ignored; any registered dataset works).

    The returned loader carries ``ssprl_sampler`` so the trainer can position it on resume.
    """
    dicts = [_strip(d) for d in get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)]
    mapper = mapper or PyramidDatasetMapper(cfg)
    seed = resolve_seed(cfg)
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} must be divisible by the {world} GPUs")
    sampler = ResumableTrainingSampler(len(dicts), total // world, seed)
    dataset = SeededMapDataset(dicts, mapper, seed)
    logger.info(
        f"SS-PRL loader: {len(dicts)} images from {list(cfg.DATASETS.TRAIN)}, seed {seed}, "
        f"{mapper.num_outputs} crops per image, photometric on {mapper.photometric_on}"
    )
    loader = build_batch_data_loader(
        dataset,
        sampler,
        total,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    loader.ssprl_sampler = sampler
    return loader

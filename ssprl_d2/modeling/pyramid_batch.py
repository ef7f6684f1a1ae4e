"""The batch layout of the pyramid inputs: how the model stacks the crops and patches of a batch
(from :class:`ssprl_d2.data.PyramidDatasetMapper`) into "units", and which units share one
backbone pass. Pure functions of tensors; no parameters."""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch


def stack_units(
    batched_inputs: List[Dict], num_crops: int, grids: Sequence[int]
) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
    """Stack the crops of the batch into units: one per scale-0 crop index (B images each) and
    one per (pyramid scale, view) (B * M_s patches, image-major).

    Args:
        batched_inputs: per image, "crops" (num_crops (3, h, w) tensors), "patches" (one
            (2, M_s, 3, p, p) tensor per pyramid scale) and optionally "photometric"
            ((num_crops + sum_s 2 M_s, P) parameters in the same order).
        num_crops: scale-0 crops per image.
        grids: g_s of every pyramid scale (M_s = g_s^2).

    Returns:
        (units, params): the unit tensors, and their photometric parameters (one (n, P) tensor
        per unit) or None when the inputs carry none.
    """
    units = [torch.stack([x["crops"][i] for x in batched_inputs]) for i in range(num_crops)]
    for s in range(1, 1 + len(grids)):
        patches = torch.stack([x["patches"][s - 1] for x in batched_inputs])  # (B, 2, M, 3, p, p)
        for v in range(2):
            units.append(patches[:, v].flatten(0, 1))  # (B*M, 3, p, p)
    if "photometric" not in batched_inputs[0]:
        return units, None
    allp = torch.stack([x["photometric"] for x in batched_inputs])  # (B, N_total, P)
    params = [allp[:, i] for i in range(num_crops)]
    offset = num_crops
    for g in grids:
        m = g * g
        for _ in range(2):
            params.append(allp[:, offset : offset + m].flatten(0, 1))
            offset += m
    return units, params


def backbone_passes(units: Sequence[torch.Tensor], group_crops: str) -> List[List[int]]:
    """Indices of the units that go through the backbone together: all units of one resolution
    (``group_crops`` "resolution", in order of first appearance) or one unit per pass
    ("none")."""
    if group_crops != "resolution":
        return [[i] for i in range(len(units))]
    groups: "OrderedDict[tuple, List[int]]" = OrderedDict()
    for i, u in enumerate(units):
        groups.setdefault(tuple(u.shape[-2:]), []).append(i)
    return list(groups.values())

"""Sinkhorn-Knopp equal-partition assignment (SwAV), as a pure function."""
import torch
import torch.distributed as dist


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor, epsilon: float = 0.05, num_iters: int = 3, distributed: bool = True
) -> torch.Tensor:
    """Soft codes Q for prototype scores under the equal-partition constraint.

    Solves the entropic optimal-transport problem of SwAV: the code matrix Q (B x K, B samples
    of the global batch) is pushed to have every prototype used equally (column marginal 1/K)
    and every sample fully assigned (row marginal 1/B), starting from exp(scores / epsilon).
    Runs in float32 whatever the input dtype, subtracts the global max before ``exp`` so large
    scores cannot overflow, and when ``torch.distributed`` is initialised (and ``distributed``)
    all-reduces the sums so the constraint holds over the batch of all ranks.

    Args:
        scores: (B, K) prototype scores z^T C of the local batch.
        epsilon: entropic regularisation; smaller is sharper.
        num_iters: alternating normalisation steps.
        distributed: all-reduce across ranks when a process group exists.

    Returns:
        (B, K) float32 codes; each row sums to 1.
    """
    logits = scores.detach().float() / epsilon  # (B, K)
    use_dist = distributed and _dist_on()
    gmax = logits.max().clone()
    if use_dist:
        dist.all_reduce(gmax, op=dist.ReduceOp.MAX)
    q = torch.exp(logits - gmax).t()  # (K, B)
    num_protos = q.shape[0]
    batch = torch.tensor(float(q.shape[1]), device=q.device)
    if use_dist:
        dist.all_reduce(batch)
    total = q.sum()
    if use_dist:
        dist.all_reduce(total)
    q /= total
    for _ in range(num_iters):
        row_sums = q.sum(dim=1, keepdim=True)  # (K, 1): mass of each prototype
        if use_dist:
            dist.all_reduce(row_sums)
        # A prototype nobody scores (exp underflow) would divide 0 by 0.
        q /= row_sums.clamp_min(torch.finfo(q.dtype).tiny)
        q /= num_protos
        q /= q.sum(dim=0, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)  # columns
        q /= batch
    q *= batch  # columns sum to 1: one distribution per sample
    return q.t()

"""Two CPU processes through Detectron2's `launch` (gloo): global Sinkhorn and DDP training."""
import json
import os

import torch
import torch.distributed as dist
from detectron2.engine import launch
from detectron2.utils import comm

from ssprl_d2.engine.setup import finish_distributed

from pretrain_utils import TINY_CONFIG, TINY_OPTS, write_image_folder


def _sinkhorn_worker(out_dir):
    from ssprl_d2.modeling.sinkhorn import sinkhorn_knopp

    torch.manual_seed(0)
    scores = torch.randn(12, 5) * 3  # the global batch, same on both ranks
    rank, world = comm.get_rank(), comm.get_world_size()
    local = scores.chunk(world)[rank]
    q_dist = sinkhorn_knopp(local, 0.05, 3)
    q_single = sinkhorn_knopp(scores, 0.05, 3, distributed=False).chunk(world)[rank]
    torch.testing.assert_close(q_dist, q_single, rtol=1e-5, atol=1e-6)
    # Column marginal over the global batch (equal partition) holds only with the all-reduce.
    col = sinkhorn_knopp(local * 0.01, 0.05, 100).sum(0)
    dist.all_reduce(col)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"max_err": float((q_dist - q_single).abs().max()), "col": col.tolist()}, f)
    finish_distributed()


def test_all_reduced_sinkhorn_equals_single_process(tmp_path):
    launch(_sinkhorn_worker, 2, dist_url="auto", args=(str(tmp_path),))
    for r in range(2):
        res = json.load(open(tmp_path / f"rank{r}.json"))
        assert res["max_err"] < 1e-5
        assert all(abs(c - 12 / 5) < 0.2 for c in res["col"])


def _train_worker(folder, out_dir):
    import ssprl_d2  # noqa: F401
    from ssprl_d2.engine import build_trainer
    from ssprl_d2.engine.setup import load_config

    cfg = load_config(
        TINY_CONFIG,
        [
            "DATASETS.SSPRL.IMAGE_FOLDERS", f"[['ddp_tiny', '{folder}']]",
            "DATASETS.TRAIN", "('ddp_tiny',)",
            "OUTPUT_DIR", out_dir,
            *TINY_OPTS,
            "SOLVER.MAX_ITER", "3",
            "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "1",
        ],
    )
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    # Gradients are averaged by DDP: both ranks hold identical weights after training.
    w = trainer.model.module.backbone.stem.conv1.weight.detach().clone()
    ws = comm.all_gather(w)
    torch.testing.assert_close(ws[0], ws[1])
    if comm.is_main_process():
        with open(os.path.join(out_dir, "done.json"), "w") as f:
            json.dump({"iter": trainer.iter}, f)
    finish_distributed()


def test_two_process_training(tmp_path):
    folder = write_image_folder(str(tmp_path / "imgs"), n=12)
    out = str(tmp_path / "out")
    launch(_train_worker, 2, dist_url="auto", args=(folder, out))
    assert json.load(open(os.path.join(out, "done.json")))["iter"] == 3
    assert os.path.exists(os.path.join(out, "model_final.pth"))

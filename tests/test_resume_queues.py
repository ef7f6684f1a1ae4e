"""Every rank resumes its own queue: a 2-process gloo run stopped after a checkpoint and resumed
ends with the weights of an uninterrupted run; and a SIGKILLed single-process run of the real
``tools/train_net.py`` resumed with ``--resume`` reproduces the uninterrupted weights exactly."""
import os
import signal
import subprocess
import sys
import time

import torch
from detectron2.engine import HookBase, launch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

import ssprl_d2  # noqa: F401
from ssprl_d2.engine import build_trainer
from ssprl_d2.engine.setup import finish_distributed, load_config

from pretrain_utils import REPO, TINY_CONFIG, TINY_OPTS, write_image_folder

# Queues per rank: 8 / 16 / 36 entries, full after 4 / 2 / 2 pushes from iteration 1, so the
# pyramid queues are in use when training resumes from the checkpoint after iteration 2.
EXTRA = [
    "SOLVER.MAX_ITER", "6",
    "SOLVER.CHECKPOINT_PERIOD", "3",
    "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "1",
    "MODEL.RESNETS.NORM", "BN",
]  # fmt: skip


class StopAt(HookBase):
    def __init__(self, stop_at):
        self.stop_at = stop_at

    def before_step(self):
        if self.trainer.iter == self.stop_at:
            raise KeyboardInterrupt("simulated kill")


def _worker(folder, out_dir, stop_at, resume):
    cfg = load_config(
        TINY_CONFIG,
        [
            "DATASETS.SSPRL.IMAGE_FOLDERS", f"[['ddp_resume', '{folder}']]",
            "DATASETS.TRAIN", "('ddp_resume',)",
            "OUTPUT_DIR", out_dir, *TINY_OPTS, *EXTRA,
        ],
    )  # fmt: skip
    seed_all_rng(cfg.SEED + comm.get_rank())
    trainer = build_trainer(cfg)
    if stop_at is not None:
        trainer.register_hooks([StopAt(stop_at)])
    trainer.resume_or_load(resume=resume)
    try:
        trainer.train()
    except KeyboardInterrupt:
        pass
    model = trainer.model.module
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(out_dir, f"state_rank{comm.get_rank()}_{stop_at}_{resume}.pth"))
    finish_distributed()


def _final_state(out, rank, resumed):
    return torch.load(os.path.join(out, f"state_rank{rank}_None_{resumed}.pth"))


def test_two_process_resume_restores_each_rank_queue(tmp_path):
    folder = write_image_folder(str(tmp_path / "imgs"), n=12)
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    launch(_worker, 2, dist_url="auto", args=(folder, full, None, False))
    launch(_worker, 2, dist_url="auto", args=(folder, cut, 4, False))
    with open(os.path.join(cut, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000002.pth"
    ckpt = torch.load(os.path.join(cut, "model_0000002.pth"), weights_only=True)
    per_rank = ckpt["per_rank_state"]
    assert len(per_rank) == 2
    assert not torch.equal(per_rank[0]["queues.1.features"], per_rank[1]["queues.1.features"])
    launch(_worker, 2, dist_url="auto", args=(folder, cut, None, True))
    for rank in range(2):
        a, b = _final_state(full, rank, False), _final_state(cut, rank, True)
        for k in a:
            # Plain-BN running statistics are per-rank buffers that only inference reads (training
            # normalises with batch statistics); Detectron2 saves rank 0's, so after a resume
            # rank 1 holds rank 0's. SyncBN keeps them equal on every rank.
            if rank > 0 and k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {k}")
    r0, r1 = _final_state(cut, 0, True), _final_state(cut, 1, True)
    torch.testing.assert_close(r0["backbone.stem.conv1.weight"], r1["backbone.stem.conv1.weight"])


def _train_cmd(folder, out, resume=False):
    # Checkpoints after iterations 3, 7 and 11; queues full from iteration 2 on.
    opts = [
        "DATASETS.SSPRL.IMAGE_FOLDERS", f"[['kill_resume', '{folder}']]",
        "DATASETS.TRAIN", "('kill_resume',)", "OUTPUT_DIR", out, *TINY_OPTS,
        "SOLVER.MAX_ITER", "14", "SOLVER.CHECKPOINT_PERIOD", "4",
        "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "1",
    ]  # fmt: skip
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"),
           "--config-file", TINY_CONFIG]
    return cmd + (["--resume"] if resume else []) + opts


def _run_logged(cmd, log):
    """Run ``cmd`` to the end with its output in the file ``log`` (kept after a failure)."""
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=_env(), stdout=f, stderr=subprocess.STDOUT).returncode
    assert rc == 0, f"{' '.join(cmd[:4])} ... failed ({rc}), see {log}"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _last_checkpoint(out):
    try:
        with open(os.path.join(out, "last_checkpoint")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def test_sigkill_then_resume_reproduces_uninterrupted_weights(tmp_path):
    folder = write_image_folder(str(tmp_path / "imgs"), n=12)
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    _run_logged(_train_cmd(folder, full), str(tmp_path / "full.log"))

    with open(tmp_path / "cut.log", "w") as log:
        proc = subprocess.Popen(
            _train_cmd(folder, cut), env=_env(), stdout=log, stderr=subprocess.STDOUT
        )
        # No wall-clock deadline: the run's own end bounds the wait (the machine may be slow).
        while proc.poll() is None and not _last_checkpoint(cut).startswith("model_0"):
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {tmp_path}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _last_checkpoint(cut)
    assert killed_at in ("model_0000003.pth", "model_0000007.pth", "model_0000011.pth")
    assert not os.path.exists(os.path.join(cut, "model_final.pth"))
    _run_logged(_train_cmd(folder, cut, resume=True), str(tmp_path / "resume.log"))
    with open(tmp_path / "resume.log") as f:
        assert f"Starting training from iteration {int(killed_at[6:13]) + 1}" in f.read()
    a = torch.load(os.path.join(full, "model_final.pth"), weights_only=True)["model"]
    b = torch.load(os.path.join(cut, "model_final.pth"), weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert int(b["queues.1.num_filled"]) > 0  # the resumed queues were in use
    for k in a:
        assert torch.equal(a[k], b[k]), k

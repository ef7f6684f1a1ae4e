"""kNN multi-label monitor: the weighted vote on hand-built inputs, a real pre-training run that
logs ``knn/mAP``, start-up validation, and the same mAP on one and two gloo processes."""
import json
import math
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import launch
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ssprl_d2.engine import build_trainer
from ssprl_d2.engine.hooks import KNNMonitor
from ssprl_d2.engine.setup import finish_distributed
from ssprl_d2.evaluation.knn import knn_multilabel_map, knn_multilabel_scores, subset_indices

from pretrain_utils import tiny_pretrain_cfg, write_image_folder

CLASSES = ["red", "green", "blue"]
KNN_OPTS = [
    "INPUT.CLASSIFICATION.TEST_RESIZE", "32",
    "INPUT.CLASSIFICATION.TEST_CROP_SIZE", "32",
    "TEST.KNN.K", "3",
    "TEST.KNN.TEMPERATURE", "0.1",
    "TEST.KNN.BATCH_SIZE", "2",
]


# ------------------------------------------------------------------------------ pure function
def test_weighted_vote_known_answer():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])  # -1 ("ignore") does not vote
    query = torch.tensor([[2.0, 0.0]])  # cosine 1, 0, 1/sqrt(2) with the memory
    scores = knn_multilabel_scores(memory * 3.0, labels, query, k=2, temperature=0.5)
    w0, w2 = math.exp(1.0 / 0.5), math.exp(math.sqrt(0.5) / 0.5)  # neighbours 0 and 2
    expected = torch.tensor([[w0 / (w0 + w2), w2 / (w0 + w2)]])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    # k above N takes every memory item; a tiny temperature approaches the 1-NN vote.
    all_k = knn_multilabel_scores(memory, labels, query, k=10, temperature=1.0)
    w = torch.exp(torch.tensor([1.0, 0.0, math.sqrt(0.5)]))
    torch.testing.assert_close(all_k[0], torch.stack([w[0], w[1] + w[2]]) / w.sum())
    one_nn = knn_multilabel_scores(memory, labels, query, k=3, temperature=1e-4)
    torch.testing.assert_close(one_nn, torch.tensor([[1.0, 0.0]]))


def test_knn_map_perfect_separation_and_subset():
    memory = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.8]])
    memory_labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.2], [0.2, 1.0], [0.8, 0.1]])
    query_labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    assert knn_multilabel_map(memory, memory_labels, queries, query_labels, 2, 0.07) == 100.0
    assert subset_indices(5, 0) == [0, 1, 2, 3, 4] and subset_indices(5, 9) == list(range(5))
    chosen = subset_indices(100, 10, seed=0)
    assert chosen == sorted(chosen) and len(set(chosen)) == 10 and chosen == subset_indices(100, 10)


# ------------------------------------------------------------------------------ tiny datasets
def register_tiny_labelled(folder: str, prefix: str, num_train: int = 8) -> None:
    """``{prefix}_train`` (the first ``num_train`` images) and ``{prefix}_val`` (the rest), each
    image labelled with 1-2 of three classes."""
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("img_"))
    dicts = [
        {
            "file_name": f, "image_id": i, "height": 56, "width": 64,
            "annotations": [{"category_id": i % 3}] + ([{"category_id": 2}] if i % 2 else []),
        }
        for i, f in enumerate(files)
    ]
    for split, part in (("train", dicts[:num_train]), ("val", dicts[num_train:])):
        name = f"{prefix}_{split}"
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda part=part: [dict(d) for d in part])
            MetadataCatalog.get(name).set(thing_classes=list(CLASSES))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, one_torch_thread):
    root = write_image_folder(str(tmp_path_factory.mktemp("knn_imgs")), n=12)
    register_tiny_labelled(root, "knn_tiny")
    return root


def _knn_cfg(folder, output_dir, extra=()):
    return tiny_pretrain_cfg(
        folder,
        output_dir,
        extra=[
            "TEST.KNN.TRAIN_DATASET", "knn_tiny_train",
            "TEST.KNN.TEST_DATASETS", "('knn_tiny_val',)",
            *KNN_OPTS,
            *extra,
        ],
    )


def _train(cfg):
    seed_all_rng(cfg.SEED)
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def test_pretraining_run_logs_knn_map(folder, tmp_path):
    cfg = _knn_cfg(folder, str(tmp_path), ["TEST.KNN.PERIOD", "2", "SOLVER.MAX_ITER", "5"])
    trainer = _train(cfg)
    assert sum(isinstance(h, KNNMonitor) for h in trainer._hooks) == 1
    assert trainer.model.training  # train mode restored after the evaluations
    # Training is unchanged by the monitor (eval-mode BN, no draws from the training streams).
    plain_cfg = tiny_pretrain_cfg(folder, str(tmp_path / "plain"), extra=["SOLVER.MAX_ITER", "5"])
    plain = _train(plain_cfg)
    assert not any(isinstance(h, KNNMonitor) for h in plain._hooks)
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert losses == [v for v, _ in plain.storage.history("total_loss").values()]
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    knn = {m["iteration"]: m for m in metrics if "knn/mAP" in m}
    assert sorted(knn) == [1, 3, 4]  # after iterations 2, 4 and the last one (5), 0-based
    for m in knn.values():
        assert math.isfinite(m["knn/mAP"]) and 0.0 <= m["knn/mAP"] <= 100.0
        assert m["knn/time_s"] > 0 and 0 < m["knn/time_fraction"] < 1


def test_monitor_off_by_default_and_validation(folder, tmp_path):
    cfg = tiny_pretrain_cfg(folder, str(tmp_path), extra=["SOLVER.MAX_ITER", "1"])
    assert cfg.TEST.KNN.TRAIN_DATASET == ""
    bad = [
        (["TEST.KNN.TRAIN_DATASET", "no_such_set"], "TEST.KNN.TRAIN_DATASET"),
        (["TEST.KNN.TEST_DATASETS", "('no_such_set',)"], "TEST.KNN.TEST_DATASETS"),
        (["TEST.KNN.K", "0"], "TEST.KNN.K"),
        (["TEST.KNN.TEMPERATURE", "0.0"], "TEST.KNN.TEMPERATURE"),
    ]
    for opts, key in bad:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            _knn_cfg(folder, str(tmp_path), opts)
    with pytest.raises(ValueError, match=r"TEST\.KNN\.TRAIN_DATASET"):
        tiny_pretrain_cfg(
            folder, str(tmp_path), extra=["TEST.KNN.TEST_DATASETS", "('knn_tiny_val',)"]
        )


# ------------------------------------------------------------------------------ DDP
def _evaluate_fixed_model(folder, weights, out_file):
    torch.set_num_threads(1)
    register_tiny_labelled(folder, "knn_tiny")
    cfg = _knn_cfg(folder, os.path.dirname(out_file))
    model = build_model(cfg)
    # Only the backbone: queue buffers are sized per process.
    model.backbone.load_state_dict(torch.load(weights, weights_only=True))
    model.train()
    monitor = KNNMonitor(cfg)
    result = monitor.evaluate(model)
    assert model.training
    results = comm.all_gather(result)
    if comm.is_main_process():
        with open(out_file, "w") as f:
            json.dump(results, f)
    finish_distributed()


def test_same_map_on_one_and_two_processes(folder, tmp_path):
    torch.manual_seed(0)
    model = build_model(_knn_cfg(folder, str(tmp_path)))
    weights = str(tmp_path / "model.pth")
    torch.save(model.backbone.state_dict(), weights)
    _evaluate_fixed_model(folder, weights, str(tmp_path / "single.json"))
    two_file = str(tmp_path / "two.json")
    launch(_evaluate_fixed_model, 2, dist_url="auto", args=(folder, weights, two_file))
    single = json.load(open(tmp_path / "single.json"))
    two = json.load(open(tmp_path / "two.json"))
    assert len(single) == 1 and len(two) == 2
    assert math.isfinite(single[0]["knn_tiny_val"])
    assert two[0] == two[1] == single[0]  # bitwise: the same batches on every rank

"""mAP of the multi-label evaluator against sklearn, and the evaluator's Detectron2 protocol."""
import logging
import math

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from sklearn.metrics import average_precision_score

from ssprl_d2.evaluation import MultiLabelEvaluator, average_precision, mean_average_precision


def _sklearn_map(scores, labels, ignore_value=-1):
    aps = []
    for c in range(scores.shape[1]):
        keep = labels[:, c] != ignore_value
        y = labels[keep, c]
        if y.sum() == 0:
            continue
        aps.append(average_precision_score(y, scores[keep, c]))
    return float(np.mean(aps)), aps


@pytest.mark.parametrize("seed", range(5))
def test_ap_matches_sklearn_without_ignore(seed):
    rng = np.random.RandomState(seed)
    scores = rng.rand(200, 7)
    labels = (rng.rand(200, 7) < 0.3).astype(np.float32)
    for c in range(7):
        assert average_precision(scores[:, c], labels[:, c]) == pytest.approx(
            average_precision_score(labels[:, c], scores[:, c]), abs=1e-12
        )
    mean_ap, per_class = mean_average_precision(scores, labels)
    assert mean_ap == pytest.approx(_sklearn_map(scores, labels)[0], abs=1e-12)
    assert per_class.shape == (7,)


@pytest.mark.parametrize("seed", range(5))
def test_ap_matches_sklearn_with_ignored_entries_and_ties(seed):
    rng = np.random.RandomState(100 + seed)
    # Scores rounded to one decimal: many ties, which sklearn groups into one threshold.
    scores = np.round(rng.rand(300, 6), 1)
    labels = (rng.rand(300, 6) < 0.25).astype(np.float32)
    labels[rng.rand(300, 6) < 0.15] = -1
    mean_ap, per_class = mean_average_precision(scores, labels, ignore_value=-1)
    ref_map, ref_aps = _sklearn_map(scores, labels)
    assert mean_ap == pytest.approx(ref_map, abs=1e-12)
    np.testing.assert_allclose(per_class, ref_aps, atol=1e-12)
    # Ignoring must differ from counting the entries as negatives.
    as_negative = np.where(labels == -1, 0, labels)
    assert mean_average_precision(scores, as_negative)[0] != pytest.approx(mean_ap, abs=1e-6)


def test_known_answer_and_class_without_positives(caplog):
    # Ranking: pos, neg, pos -> AP = (1/2)*1 + (1/2)*(2/3).
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([0.9, 0.8], [1, -1]) == pytest.approx(1.0)
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    labels = np.array([[1, 0], [0, -1]])
    with caplog.at_level(logging.WARNING):
        mean_ap, per_class = mean_average_precision(scores, labels, class_names=["cat", "dog"])
    assert mean_ap == pytest.approx(1.0)
    assert math.isnan(per_class[1])
    assert "dog" in caplog.text
    with pytest.raises(ValueError, match="labels must be 0, 1"):
        average_precision([0.1, 0.2], [1, 2])


def test_evaluator_result_format_and_percent(tmp_path):
    name = "test_multilabel_metrics_eval"
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    rng = np.random.RandomState(0)
    scores = rng.rand(40, 3).astype(np.float32)
    labels = (rng.rand(40, 3) < 0.4).astype(np.float32)
    labels[:5, 2] = -1
    evaluator = MultiLabelEvaluator(name, output_dir=str(tmp_path))
    evaluator.reset()
    for i in range(0, 40, 8):  # batches as a test loader gives them
        inputs = [
            {"labels": torch.from_numpy(lab), "image_id": i + j}
            for j, lab in enumerate(labels[i : i + 8])
        ]
        outputs = [{"scores": torch.from_numpy(s)} for s in scores[i : i + 8]]
        evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    assert list(results) == ["classification"]
    res = results["classification"]
    assert set(res) == {"mAP", "AP-a", "AP-b", "AP-c"}
    assert res["mAP"] == pytest.approx(100 * _sklearn_map(scores, labels)[0], abs=1e-6)
    assert (tmp_path / "multilabel_results.json").exists()
    saved = torch.load(tmp_path / "multilabel_predictions.pth", weights_only=False)
    assert saved["scores"].shape == (40, 3) and len(saved["image_ids"]) == 40

"""Pre-training hooks: skipped-image counting and the loss summary at the end of a run."""
import json
import logging
import os
from typing import Dict, List

from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class LossSummary(HookBase):
    """Logs each loss term at the start and the end of training and writes
    ``OUTPUT_DIR/loss_summary.json`` (first / last window medians of every ``loss*`` term)."""

    def __init__(self, output_dir: str, window: int = 20):
        self.output_dir = output_dir
        self.window = window
        self._first: Dict[str, float] = {}

    def after_step(self):
        storage = self.trainer.storage
        for name, hist in storage.histories().items():
            if name.startswith("loss") or name == "total_loss":
                if name not in self._first and len(hist.values()) >= 1:
                    self._first[name] = hist.values()[0][0]

    def after_train(self):
        if not comm.is_main_process() or not self._first:
            return
        storage = self.trainer.storage
        rows: List[Dict] = []
        for name in sorted(self._first):
            hist = storage.histories().get(name)
            if hist is None:
                continue
            rows.append(
                {
                    "term": name,
                    "start": float(self._first[name]),
                    "end": float(hist.median(self.window)),
                }
            )
        lines = [f"{'term':<18}{'start':>10}{'end':>10}"]
        lines += [f"{r['term']:<18}{r['start']:>10.4f}{r['end']:>10.4f}" for r in rows]
        logger.info("SS-PRL loss summary (end = median of the last %d iters):\n%s",
                    self.window, "\n".join(lines))
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "loss_summary.json"), "w") as f:
            json.dump({"iterations": self.trainer.iter + 1, "terms": rows}, f, indent=2)


def build_pretrain_hooks(cfg) -> List[HookBase]:
    hooks: List[HookBase] = [LossSummary(cfg.OUTPUT_DIR)]
    try:
        from ssprl_d2.data.image_io import SkippedImagesLogger
    except ImportError:  # pragma: no cover - the data module always ships it
        return hooks
    hooks.append(SkippedImagesLogger())
    return hooks

#!/usr/bin/env python
"""Draw a fixed labelled subset of a dataset's images for semi-supervised fine-tuning.

    python tools/make_label_subset.py --dataset coco_2014_train --fraction 0.01 --seed 0 \
        --out configs/classification/subsets/coco2014_train_1pct_seed0.txt

The recipe (also used when a config's DATASETS.CLASSIFICATION.LABEL_SUBSET is missing on first use):
image ids sorted (numerically), numpy RandomState(seed).choice(N, round(fraction * N),
replace=False), written one id per line. --config-file registers the datasets a config names.
"""
import argparse
import logging

import ssprl_d2  # noqa: F401  # isort: skip  (first: registers models and datasets)
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from ssprl_d2.data.label_subset import sample_label_subset, write_label_subset
from ssprl_d2.engine.setup import load_config


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="registered dataset name")
    parser.add_argument("--fraction", type=float, required=True, help="e.g. 0.01 for 1%%")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output file (one image id per line)")
    parser.add_argument("--config-file", default="", help="config whose datasets to register")
    args = parser.parse_args(argv)
    setup_logger(name="ssprl_d2")
    if args.config_file:
        load_config(args.config_file)
    ids = [d["image_id"] for d in DatasetCatalog.get(args.dataset)]
    subset = sample_label_subset(ids, args.fraction, args.seed)
    write_label_subset(args.out, subset)
    logging.getLogger("ssprl_d2").info(
        f"Wrote {len(subset)} of {len(ids)} image ids of {args.dataset} to {args.out}"
    )
    return subset


if __name__ == "__main__":
    main()

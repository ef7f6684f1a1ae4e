#!/usr/bin/env python
"""Fast linear evaluation: features of the frozen backbone are extracted once and the linear head
is trained on them (see ssprl_d2/engine/fast_linear.py). Same config as the standard run.

    python tools/fast_linear_eval.py --config-file configs/classification/linear_voc07.yaml \
        MODEL.WEIGHTS ssprl_r50.pkl
    python tools/fast_linear_eval.py --config-file configs/classification/linear_demo.yaml

Equivalent: tools/train_net.py with MODEL.CLASSIFIER.FAST_LINEAR.ENABLED True.
"""
import ssprl_d2  # noqa: F401  # isort: skip  (first: registers models and datasets)
from detectron2.engine import default_argument_parser, launch

from ssprl_d2.engine.fast_linear import run_fast_linear
from ssprl_d2.engine.setup import finish_distributed, setup


def main(args):
    result = run_fast_linear(setup(args))
    finish_distributed()
    return result


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

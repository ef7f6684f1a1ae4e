#!/usr/bin/env python
"""The single entry point of ssprl_d2: SS-PRL pre-training, multi-label classification, Mask
R-CNN and semantic segmentation transfer, picked by the config's MODEL.META_ARCHITECTURE.

    python tools/train_net.py --config-file configs/ssprl_pretrain.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/ssprl_demo.yaml          # CPU, minutes
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model.pkl
    python tools/train_net.py --config-file CFG --resume                      # after a crash

Multi-node: add --num-machines N --machine-rank R --dist-url tcp://HOST:PORT (Detectron2 launch).
"""
import ssprl_d2  # noqa: F401  # isort: skip  (first: registers models and datasets)
from detectron2.engine import default_argument_parser, launch

from ssprl_d2.checkpoint import SSPRLCheckpointer
from ssprl_d2.engine import finish_distributed, setup, trainer_class


def main(args):
    result = run(args)
    finish_distributed()
    return result


def run(args):
    cfg = setup(args)
    trainer_cls = trainer_class(cfg)  # one trainer per job, from MODEL.META_ARCHITECTURE
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        checkpointer = SSPRLCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, trust_pickle=cfg.MODEL.WEIGHTS_TRUST_PICKLE
        )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return trainer_cls.test(cfg, model)
    return trainer_cls.train_job(cfg, resume=args.resume)


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()

#!/usr/bin/env python
"""Transfer benchmark: evaluate one set of weights on the SS-PRL paper's protocols.

Each protocol is one of the project's configs launched through ``tools/train_net.py`` (a
subprocess; multi-GPU / multi-node flags are passed through) with ``MODEL.WEIGHTS`` and a
per-protocol ``OUTPUT_DIR``. Its metrics are read back from ``OUTPUT_DIR/metrics.json`` and the
results are written as paper-style Markdown tables with the paper's numbers side by side.

    python benchmarks/transfer/run_transfer.py --weights ssprl_r50.pkl \
        --protocols linear_voc07,semi_coco_10,maskrcnn_15k --output-dir output/transfer \
        --num-gpus 8
    python benchmarks/transfer/run_transfer.py \
        --weights output/demo/pretrain_ssprl/model_final.pth \
        --protocols demo_linear,demo_maskrcnn,demo_fcn --output-dir output/transfer_demo
    python benchmarks/transfer/run_transfer.py --weights ssprl_r50.pkl \
        --protocols seg_voc12aug_20k,seg_cityscapes_40k --output-dir output/transfer --num-gpus 8

A ``.pth`` checkpoint is converted first (tools/convert_to_d2.py). Protocols whose results exist
are skipped unless ``--redo``; ``--dry-run`` prints the commands. Extra ``KEY VALUE`` overrides
after the flags go to every protocol.
"""
import argparse
from pathlib import Path
from typing import Dict

from ssprl_d2.pipeline.transfer import PROTOCOLS, launch_flags, parse_protocols, run_transfer

# The checkout this script belongs to: its tools and configs are the ones the protocols run.
REPO_ROOT = Path(__file__).resolve().parents[2]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="Detectron2 .pkl or checkpoint .pth")
    parser.add_argument("--protocols", default="demo_linear,demo_maskrcnn",
                        help=f"comma-separated, or 'all': {', '.join(PROTOCOLS)}")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="", help="as for tools/train_net.py")
    parser.add_argument("--redo", action="store_true", help="rerun protocols with results")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides for every protocol")
    return parser


def main(argv=None) -> Dict[str, Dict[str, float]]:
    args = get_parser().parse_args(argv)
    try:
        names = parse_protocols(args.protocols)
    except ValueError as e:
        raise SystemExit(f"run_transfer: error: {e}")
    flags = launch_flags(args.num_gpus, args.num_machines, args.machine_rank, args.dist_url)
    return run_transfer(args.weights, names, args.output_dir, repo_root=str(REPO_ROOT),
                        flags=flags, opts=args.opts, redo=args.redo, dry_run=args.dry_run)


if __name__ == "__main__":
    main()

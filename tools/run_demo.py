#!/usr/bin/env python
"""The end-to-end CPU demo on the bundled SYNTHETIC dataset (`make demo`), about 12 minutes on
2 cores:

    python tools/run_demo.py --output-dir output/demo

1. SS-PRL pre-training of a ResNet-18 (configs/ssprl_demo.yaml, tools/train_net.py);
2. conversion to Detectron2 weights (tools/convert_to_d2.py);
3. linear multi-label probe (configs/classification/linear_demo.yaml, fast path on cached
   features) from the SS-PRL weights and from a random-init backbone;
4. a short Mask R-CNN fine-tune (configs/detection/mask_rcnn_demo.yaml) from both;
5. prototype figures (tools/visualize_prototypes.py);
6. the global-only baseline pre-training (configs/demo/ssprl_demo_global_only.yaml, same
   budget) and its linear probe (--skip-baseline leaves it out).

With --seeds 0 1 2 it runs the whole demo once per seed (OUTPUT/seed<N>/, the SEED of every
stage) and writes the mean, spread and range of every cell to OUTPUT/seeds_results.md:

    python tools/run_demo.py --output-dir output/demo_seeds --seeds 0 1 2

It prints a results table and writes results.md / results.json, the figures (visualizations/)
and one log per stage (logs/) into the output folder. Stages whose outputs exist are skipped,
so a re-run is quick; --redo reruns everything. --tiny runs every stage at toy size (tests).
"""
import argparse
import sys
from pathlib import Path

from ssprl_d2.pipeline.demo import DemoError, run_demo, run_demo_seeds

# The checkout this script belongs to: its tools and configs are the ones the stages run.
REPO_ROOT = Path(__file__).resolve().parents[1]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="output/demo", help="where everything goes")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a few iterations)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="leave out the global-only baseline pre-training row")
    parser.add_argument("--redo", action="store_true", help="rerun stages whose outputs exist")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="run the demo once per seed and summarise mean / spread")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    opts = dict(repo_root=str(REPO_ROOT), tiny=args.tiny, skip_baseline=args.skip_baseline,
                redo=args.redo, dry_run=args.dry_run)
    try:
        if args.seeds:
            return run_demo_seeds(args.output_dir, args.seeds, **opts)
        return run_demo(args.output_dir, **opts)
    except DemoError as e:
        print(f"[demo] ERROR: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()

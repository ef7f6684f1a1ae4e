#!/usr/bin/env python
"""Figures of the prototypes learned by an SS-PRL checkpoint (paper Figures 2 and 3), on CPU.

    python tools/visualize_prototypes.py --checkpoint output/demo/pretrain_ssprl/model_final.pth \
        --dataset ssprl_demo_val --output-dir output/demo/visualizations

Writes prototypes_tsne_scale0.png and prototypes_tsne_scale{S}.png (t-SNE of the prototypes of
scale 0 and of the finest scale S, each used prototype with the views assigned to it) and
cross_scale_prototypes.png (for one image-level prototype, the patch-level prototypes most often
predicted for the patches of its images). The model config is read from config.yaml next to the
checkpoint unless --config is given.
"""
import argparse
import json
import os
import time

import ssprl_d2  # noqa: F401  (registers models, datasets)
from ssprl_d2.engine.setup import load_ssprl_checkpoint
from ssprl_d2.visualization import visualize_prototypes


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="pre-training checkpoint (.pth)")
    parser.add_argument("--dataset", default="ssprl_demo_val", help="registered dataset name")
    parser.add_argument("--output-dir", required=True, help="folder of the PNG files")
    parser.add_argument("--config", default="", help="pre-training config (default: next to "
                        "the checkpoint)")
    parser.add_argument("--size", type=int, default=1200, help="side of every PNG, in pixels")
    parser.add_argument("--per-prototype", type=int, default=4, help="example views per "
                        "prototype")
    parser.add_argument("--num-prototypes", type=int, default=12, help="prototypes drawn with "
                        "examples in the t-SNE maps (the most used ones)")
    parser.add_argument("--image-prototype", type=int, default=None, help="image-level "
                        "prototype of the cross-scale figure (default: the most used)")
    parser.add_argument("--top-k", type=int, default=3, help="patch-level prototypes shown in "
                        "the cross-scale figure")
    parser.add_argument("--max-images", type=int, default=0, help="use only the first N images "
                        "(0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    start = time.perf_counter()
    model, cfg = load_ssprl_checkpoint(args.checkpoint, args.config)
    summary = visualize_prototypes(
        model,
        cfg,
        args.dataset,
        args.output_dir,
        size=args.size,
        per_prototype=args.per_prototype,
        num_prototypes=args.num_prototypes,
        image_prototype=args.image_prototype,
        top_k=args.top_k,
        max_images=args.max_images,
        seed=args.seed,
    )
    summary["seconds"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(args.output_dir, "prototypes_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for path in summary["files"]:
        print(f"Wrote {path}")
    if "cross_scale" in summary:
        c = summary["cross_scale"]
        tops = ", ".join(f"#{j} ({n})" for j, n in c["patch_prototypes"])
        print(f"Image prototype #{c['image_prototype']} ({len(c['images'])} images): top patch "
              f"prototypes {tops}")
    print(f"Done in {summary['seconds']} s")
    return summary


if __name__ == "__main__":
    main()

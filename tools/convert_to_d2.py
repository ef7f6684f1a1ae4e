#!/usr/bin/env python
"""Convert a ResNet checkpoint to Detectron2's .pkl format (and optionally torchvision's).

Accepts ssprl_d2 pre-training checkpoints (``output/model_final.pth``), the SS-PRL authors'
release, SwAV, MoCo and plain torchvision ResNet state dicts; heads, prototypes, queues and
``fc`` are dropped. Example:

    python tools/convert_to_d2.py output/ssprl_coco/model_final.pth ssprl_r50.pkl
    python tools/train_net.py --config-file configs/detection/mask_rcnn_R50_FPN_coco2014_15k.yaml \\
        --num-gpus 8 MODEL.WEIGHTS ssprl_r50.pkl

The file is read with ``torch.load(weights_only=True)``; files that pickle other Python objects
are refused unless ``--trust-pickle`` is given.
"""
import argparse
import sys

from ssprl_d2.checkpoint import (
    ConversionError,
    convert_checkpoint,
    required_config,
    save_d2_pickle,
    save_torchvision,
)


def _format_value(v):
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in v) + "]"
    return str(v)


def _print_list(title, items, limit):
    print(f"{title}: {len(items)}")
    for item in items[:limit]:
        print(f"  {item}")
    if len(items) > limit:
        print(f"  ... and {len(items) - limit} more (use --verbose to list all)")


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="checkpoint (.pth/.pth.tar/.pkl)")
    parser.add_argument("output", help="Detectron2 weights to write (.pkl)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in the input (can run code: trusted files only)",
    )
    parser.add_argument(
        "--torchvision-out", default="", help="also write torchvision-named weights (.pth)"
    )
    parser.add_argument(
        "--depth", type=int, default=None, choices=(18, 34, 50, 101, 152),
        help="ResNet depth (default: inferred from the blocks per stage)",
    )
    parser.add_argument(
        "--prefix", default=None,
        help="prefix of the backbone keys, e.g. 'module.encoder_q.' (default: detected)",
    )
    parser.add_argument("--verbose", action="store_true", help="list every kept/dropped key")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    if not args.output.endswith(".pkl"):
        # DetectionCheckpointer only applies name-matching heuristics to .pkl files.
        raise SystemExit("convert_to_d2: error: OUTPUT must end with .pkl")
    try:
        result = convert_checkpoint(
            args.input, depth=args.depth, prefix=args.prefix, trust_pickle=args.trust_pickle
        )
        save_d2_pickle(result, args.output)
        if args.torchvision_out:
            save_torchvision(result, args.torchvision_out)
    except ConversionError as e:
        raise SystemExit(f"convert_to_d2: error: {e}")
    except OSError as e:
        raise SystemExit(f"convert_to_d2: error: cannot write output: {e}")

    limit = 10**9 if args.verbose else 8
    print(
        f"Found a ResNet-{result.depth} ({result.source_format} naming, "
        f"prefix {result.prefix!r}) in {args.input}"
    )
    _print_list("Kept (input -> Detectron2)", [f"{a} -> {b}" for a, b in result.kept], limit)
    _print_list("Dropped (not backbone)", result.dropped, limit)
    _print_list("Could not map (look like backbone, no Detectron2 name)", result.unmapped, 10**9)
    if result.filled:
        print(f"Filled with 0 (absent in input): {len(result.filled)} num_batches_tracked counters")
    print(f"Wrote {len(result.model)} tensors to {args.output}")
    if args.torchvision_out:
        print(f"Wrote torchvision-named weights (no fc) to {args.torchvision_out}")
    keys = required_config(result.depth)
    print("\nThese weights need (YAML keys):")
    for k, v in keys:
        print(f"  {k}: {_format_value(v)}")
    print("or on the command line:")
    print(
        "  MODEL.WEIGHTS " + args.output + " "
        + " ".join(f"{k} \"{_format_value(v)}\"" if isinstance(v, list) else f"{k} {v}"
                   for k, v in keys)
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

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
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from transfer_table import RESULT_FILE, build_markdown  # noqa: E402

from ssprl_d2.engine.demo import collect_metrics, run_tool  # noqa: E402

_CLS = ("classification/mAP",)
_DET = ("bbox/AP", "segm/AP")
_SEG = ("sem_seg/mIoU",)
_TABLE1 = "Table 1 — linear multi-label classification (frozen backbone)"
_TABLE2 = "Table 2 — semi-supervised COCO fine-tuning (20 epochs)"
_TABLE3 = "Table 3 — Mask R-CNN R50-FPN on COCO, 15k iterations"
_SUPP = "Supplement — semantic segmentation, FCN R50-D8 (DenseCL protocol)"
_DEMO = "Demo — bundled SYNTHETIC data, ResNet-18 (no paper numbers)"


@dataclass(frozen=True)
class Protocol:
    """One transfer protocol: a config, the metrics it reports and the paper's numbers."""

    name: str
    config: str
    table: str
    metrics: Sequence[str]
    paper: Mapping[str, object] = field(default_factory=dict)
    title: str = ""


# The one table of protocols (config paths relative to the repository root).
PROTOCOLS: Dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("linear_coco", "configs/classification/linear_coco.yaml", _TABLE1, _CLS,
                 {"classification/mAP": 61.3}, "COCO val2014"),
        Protocol("linear_voc07", "configs/classification/linear_voc07.yaml", _TABLE1, _CLS,
                 {"classification/mAP": 80.5}, "VOC07 test"),
        Protocol("semi_coco_1", "configs/classification/semisup_coco_1pct.yaml", _TABLE2, _CLS,
                 {"classification/mAP": 45.1}, "1% labels"),
        Protocol("semi_coco_10", "configs/classification/semisup_coco_10pct.yaml", _TABLE2, _CLS,
                 {"classification/mAP": 57.0}, "10% labels"),
        Protocol("semi_coco_100", "configs/classification/semisup_coco_100pct.yaml", _TABLE2,
                 _CLS, {"classification/mAP": 62.9}, "100% labels"),
        Protocol("maskrcnn_15k", "configs/detection/mask_rcnn_R50_FPN_coco2014_15k.yaml",
                 _TABLE3, _DET, {"bbox/AP": "see paper Table 3", "segm/AP": "see paper Table 3"},
                 "COCO val2014"),
        Protocol("seg_voc12aug_20k", "configs/segmentation/fcn_R50_D8_voc12aug_512x512_20k.yaml",
                 _SUPP, _SEG, {"sem_seg/mIoU": "see paper supplement"}, "VOC 2012 aug val"),
        Protocol("seg_cityscapes_40k",
                 "configs/segmentation/fcn_R50_D8_cityscapes_769x769_40k.yaml", _SUPP, _SEG,
                 {"sem_seg/mIoU": "see paper supplement"}, "Cityscapes fine val"),
        Protocol("demo_linear", "configs/classification/linear_demo.yaml", _DEMO, _CLS, {},
                 "ssprl_demo_val"),
        Protocol("demo_maskrcnn", "configs/detection/mask_rcnn_demo.yaml", _DEMO, _DET, {},
                 "ssprl_demo_val"),
        Protocol("demo_fcn", "configs/segmentation/fcn_demo.yaml", _DEMO, _SEG, {},
                 "ssprl_demo_sem_seg_val"),
    )
}

Launcher = Callable[[List[str], str], int]


def parse_protocols(text: str) -> List[str]:
    """Comma-separated protocol names ("all" = every protocol), validated."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(PROTOCOLS)
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise ValueError(f"Unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOLS)}")
    return names


def launch_flags(num_gpus: int = 1, num_machines: int = 1, machine_rank: int = 0,
                 dist_url: str = "") -> List[str]:
    """Detectron2 launcher flags of tools/train_net.py (defaults left out)."""
    flags = []
    if num_gpus != 1:
        flags += ["--num-gpus", str(num_gpus)]
    if num_machines != 1:
        flags += ["--num-machines", str(num_machines), "--machine-rank", str(machine_rank)]
    if dist_url:
        flags += ["--dist-url", dist_url]
    return flags


def build_command(protocol: Protocol, weights: str, output_dir: str,
                  flags: Sequence[str] = (), opts: Sequence[str] = ()) -> List[str]:
    """The tools/train_net.py arguments of one protocol."""
    return [
        "tools/train_net.py", "--config-file", protocol.config, *flags,
        *opts, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", output_dir,
    ]


def existing_result(run_dir: str, protocol: Protocol) -> Optional[Dict[str, float]]:
    """Metrics of a finished earlier run of ``protocol`` in ``run_dir``, or None."""
    path = os.path.join(run_dir, RESULT_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)["metrics"]
    metrics = collect_metrics(run_dir, protocol.metrics)
    return metrics if len(metrics) == len(protocol.metrics) else None


def prepare_weights(weights: str, output_dir: str, launcher: Launcher, redo: bool = False,
                    dry_run: bool = False, log=print) -> str:
    """A Detectron2 ``.pkl`` for ``weights``: itself, or its conversion (cached in output_dir)."""
    if weights.endswith(".pkl"):
        return os.path.abspath(weights)
    src = os.path.abspath(weights)
    base = os.path.splitext(os.path.basename(src))[0]
    parent = os.path.basename(os.path.dirname(src))
    pkl = os.path.join(os.path.abspath(output_dir), "weights", f"{parent}_{base}.pkl")
    argv = ["tools/convert_to_d2.py", src, pkl]
    fresh = os.path.isfile(pkl) and (
        not os.path.isfile(src) or os.path.getmtime(pkl) >= os.path.getmtime(src)
    )
    if dry_run:
        log(("# up to date: " if fresh and not redo else "") + "python " + " ".join(argv))
        return pkl
    if fresh and not redo:
        log(f"[transfer] using converted weights {pkl}")
        return pkl
    log_file = os.path.join(output_dir, "logs", "convert.log")
    os.makedirs(os.path.dirname(pkl), exist_ok=True)
    if launcher(argv, log_file) != 0 or not os.path.isfile(pkl):
        raise RuntimeError(f"conversion of {weights} failed; see {log_file}")
    return pkl


def run_transfer(
    weights: str,
    protocols: Sequence[str],
    output_dir: str,
    flags: Sequence[str] = (),
    opts: Sequence[str] = (),
    redo: bool = False,
    dry_run: bool = False,
    launcher: Optional[Launcher] = None,
    log=print,
) -> Dict[str, Dict[str, float]]:
    """Run the protocols (skipping finished ones) and write the Markdown/JSON tables.

    Args:
        weights: a Detectron2 ``.pkl`` or a checkpoint to convert.
        protocols: names from :data:`PROTOCOLS`.
        output_dir: one sub-folder per protocol, plus ``transfer_results.{md,json}``.
        flags: launcher flags for tools/train_net.py (see :func:`launch_flags`).
        opts: ``KEY VALUE`` overrides for every protocol.
        redo: rerun protocols that have results.
        dry_run: print the commands, run nothing.
        launcher: ``launcher(argv, log_file) -> exit status``; default runs
            ``python argv...`` in the repository root (:func:`ssprl_d2.engine.demo.run_tool`).

    Returns:
        {protocol: {metric: value}} of every protocol with results.
    """
    out = os.path.abspath(output_dir)
    launcher = launcher or (lambda argv, log_file: run_tool(argv, log_file))
    if not dry_run:
        os.makedirs(out, exist_ok=True)
    pkl = prepare_weights(weights, out, launcher, redo=redo, dry_run=dry_run, log=log)
    results: Dict[str, Dict[str, float]] = {}
    for name in protocols:
        protocol = PROTOCOLS[name]
        run_dir = os.path.join(out, name)
        argv = build_command(protocol, pkl, run_dir, flags, opts)
        previous = None if redo else existing_result(run_dir, protocol)
        if dry_run:
            log(("# done, skipped: " if previous else "") + "python " + " ".join(argv))
            continue
        if previous is not None:
            log(f"[transfer] {name}: results exist in {run_dir}, skipped (--redo to rerun)")
            results[name] = previous
            continue
        log(f"[transfer] {name}: {protocol.config} -> {run_dir}")
        log_file = os.path.join(run_dir, "transfer.log")
        start = time.perf_counter()
        rc = launcher(argv, log_file)
        seconds = time.perf_counter() - start
        metrics = collect_metrics(run_dir, protocol.metrics)
        if rc != 0 or len(metrics) != len(protocol.metrics):
            log(f"[transfer] {name} FAILED (exit status {rc}, metrics {metrics}); see {log_file}")
            continue
        with open(os.path.join(run_dir, RESULT_FILE), "w") as f:
            json.dump({"metrics": metrics, "command": " ".join(["python", *argv]),
                       "weights": pkl, "seconds": round(seconds, 1)}, f, indent=1)
        results[name] = metrics
        log(f"[transfer] {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    if dry_run:
        return results
    text = build_markdown(PROTOCOLS, results, weights=weights, order=protocols)
    with open(os.path.join(out, "transfer_results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "transfer_results.json"), "w") as f:
        json.dump({"weights": weights, "results": results}, f, indent=1)
    log(text)
    return results


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
    return run_transfer(args.weights, names, args.output_dir, flags=flags, opts=args.opts,
                        redo=args.redo, dry_run=args.dry_run)


if __name__ == "__main__":
    main()

"""Transfer benchmark: one set of weights on the SS-PRL paper's protocols.

Each protocol is one of the project's configs launched through ``tools/train_net.py`` (a stage
of :mod:`ssprl_d2.pipeline.stages`; multi-GPU / multi-node flags are passed through) with
``MODEL.WEIGHTS`` and a per-protocol ``OUTPUT_DIR``. Its metrics are read back from
``OUTPUT_DIR/metrics.json`` into ``OUTPUT_DIR/transfer_result.json`` (the stage's product), and
the results are written as paper-style Markdown tables with the paper's numbers side by side.
A ``.pth`` checkpoint is converted first (tools/convert_to_d2.py).
"""
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from .stages import Launcher, Stage, StageRunner, collect_metrics, convert_stage
from .tables import build_transfer_markdown

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "RESULT_FILE",
    "build_command",
    "launch_flags",
    "load_results",
    "parse_protocols",
    "plan_transfer",
    "run_transfer",
    "transfer_weights",
]

RESULT_FILE = "transfer_result.json"
CONVERT = "convert"  # name of the conversion stage (log: OUT/logs/convert.log)

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


def transfer_weights(weights: str, output_dir: str) -> str:
    """The Detectron2 ``.pkl`` the protocols load: ``weights`` itself, or its conversion
    (``OUT/weights/<parent folder>_<name>.pkl``)."""
    src = os.path.abspath(weights)
    if weights.endswith(".pkl"):
        return src
    base = os.path.splitext(os.path.basename(src))[0]
    parent = os.path.basename(os.path.dirname(src))
    return os.path.join(os.path.abspath(output_dir), "weights", f"{parent}_{base}.pkl")


def plan_transfer(weights: str, protocols: Sequence[str], output_dir: str,
                  flags: Sequence[str] = (), opts: Sequence[str] = ()) -> List[Stage]:
    """The stages: the conversion of a checkpoint that is not a ``.pkl`` (into
    ``OUT/weights/``), then one stage per protocol (product ``OUT/PROTOCOL/transfer_result.json``,
    log ``OUT/PROTOCOL/transfer.log``)."""
    out = os.path.abspath(output_dir)
    stages = []
    src, pkl = os.path.abspath(weights), transfer_weights(weights, out)
    if pkl == src:
        deps, inputs = [], [src]
    else:
        stages.append(convert_stage(CONVERT, f"convert {weights} to Detectron2 .pkl", src, pkl,
                                    inputs=[src]))
        deps, inputs = [CONVERT], []
    for name in protocols:
        protocol = PROTOCOLS[name]
        run_dir = os.path.join(out, name)
        stages.append(Stage(
            name=name, title=f"{protocol.config} -> {run_dir}",
            argv=build_command(protocol, pkl, run_dir, flags, opts),
            product=os.path.join(run_dir, RESULT_FILE), deps=deps, inputs=inputs, row=name,
            columns=list(protocol.metrics), output_dir=run_dir,
            log_file=os.path.join(run_dir, "transfer.log"),
        ))
    return stages


def run_transfer(
    weights: str,
    protocols: Sequence[str],
    output_dir: str,
    *,
    repo_root: str,
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
        repo_root: root of the checkout whose tools and configs run (the CLI passes its own).
        flags: launcher flags for tools/train_net.py (see :func:`launch_flags`).
        opts: ``KEY VALUE`` overrides for every protocol.
        redo: rerun protocols that have results.
        dry_run: print the commands, run nothing.
        launcher: ``launcher(argv, log_file) -> exit status``; default runs
            ``python argv...`` in ``repo_root`` (:func:`ssprl_d2.pipeline.stages.run_tool`).

    Returns:
        {protocol: {metric: value}} of every protocol with results.
    """
    out = os.path.abspath(output_dir)
    stages = plan_transfer(weights, protocols, out, flags, opts)
    runner = StageRunner(stages, out, repo_root, redo=redo, launcher=launcher)
    pkl = transfer_weights(weights, out)
    if not dry_run:
        os.makedirs(out, exist_ok=True)
    results: Dict[str, Dict[str, float]] = {}
    for stage in stages:
        fresh = not runner.will_run[stage.name]
        command = "python " + " ".join(stage.argv)
        if stage.name == CONVERT:
            if dry_run:
                log(("# up to date: " if fresh else "") + command)
            elif fresh:
                log(f"[transfer] using converted weights {stage.product}")
            else:
                rc, seconds = runner.launch(stage)
                if rc != 0 or not os.path.isfile(stage.product):
                    raise RuntimeError(f"conversion of {weights} failed; "
                                       f"see {runner.log_file(stage)}")
                runner.record(stage, seconds)
            continue
        run_dir = stage.output_dir
        if dry_run:
            log(("# done, skipped: " if fresh else "") + command)
            continue
        if fresh:
            log(f"[transfer] {stage.name}: results exist in {run_dir}, skipped (--redo to rerun)")
            with open(stage.product) as f:
                results[stage.name] = json.load(f)["metrics"]
            continue
        log(f"[transfer] {stage.name}: {stage.title}")
        rc, seconds = runner.launch(stage)
        metrics = collect_metrics(run_dir, stage.columns)
        if rc != 0 or len(metrics) != len(stage.columns):
            log(f"[transfer] {stage.name} FAILED (exit status {rc}, metrics {metrics}); "
                f"see {stage.log_file}")
            continue
        with open(stage.product, "w") as f:
            json.dump({"metrics": metrics, "command": command, "weights": pkl,
                       "seconds": round(seconds, 1)}, f, indent=1)
        runner.record(stage, seconds)
        results[stage.name] = metrics
        log(f"[transfer] {stage.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    if dry_run:
        return results
    text = build_transfer_markdown(PROTOCOLS, results, weights=weights, order=protocols)
    with open(os.path.join(out, "transfer_results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "transfer_results.json"), "w") as f:
        json.dump({"weights": weights, "results": results}, f, indent=1)
    log(text)
    return results


def load_results(output_dir: str, names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Metrics of the protocols of ``output_dir`` that have a ``transfer_result.json``."""
    results = {}
    for name in names:
        path = os.path.join(output_dir, name, RESULT_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                results[name] = json.load(f)["metrics"]
    return results

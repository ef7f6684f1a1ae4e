"""The result tables: the demo's results.{json,md} and kNN curve, its per-seed summary, and the
transfer benchmark's paper-style tables."""
import os
import shlex
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .stages import Stage, _fmt, collect_metrics, format_duration, metric_curve, save_json

__all__ = [
    "COLUMNS",
    "METRIC_LABELS",
    "ROWS",
    "build_transfer_markdown",
    "format_results_markdown",
    "format_seeds_markdown",
    "summarize_seeds",
    "write_results",
]

# Rows of the demo's results table: key -> (label, note).
ROWS = {
    "ssprl": ("SS-PRL (configs/ssprl_demo.yaml)", "pyramid pre-training on the demo images"),
    "random": ("Random init", "same protocol, no pre-training"),
    "global": ("Global-only baseline (scale 0)", "same budget, no pyramid / cross-scale terms"),
}
# Metric columns of the demo's table: key -> (column title, source metric name).
COLUMNS = {
    "linear_map": ("linear mAP", "classification/mAP"),
    "knn_map": ("kNN mAP", "knn/mAP"),
    "finetune_map": ("10% fine-tune mAP", "classification/mAP"),
    "box_ap": ("Mask R-CNN box AP", "bbox/AP"),
    "mask_ap": ("Mask R-CNN mask AP", "segm/AP"),
}
# Column titles of the metrics the transfer protocols report.
METRIC_LABELS = {
    "classification/mAP": "mAP",
    "bbox/AP": "box AP",
    "segm/AP": "mask AP",
    "sem_seg/mIoU": "mIoU",
}


# ------------------------------------------------------------------------------------ demo
def write_results(
    output_dir: str, stages: Sequence[Stage], state: Dict, ran_now: Dict[str, float],
    tiny: bool,
) -> Dict:
    """Collect every stage's metrics and write ``results.json`` and ``results.md``.

    Returns:
        {"rows": {row: {column: value}}, "stages": {...}, "delta": {...}, ...}.
    """
    rows: Dict[str, Dict[str, Optional[float]]] = {}
    for stage in stages:
        if stage.row is None:
            continue
        row = rows.setdefault(stage.row, {c: None for c in COLUMNS})
        metrics = collect_metrics(stage.output_dir, [COLUMNS[c][1] for c in stage.columns])
        for c in stage.columns:
            row[c] = metrics.get(COLUMNS[c][1])
    delta = {}
    if "ssprl" in rows and "random" in rows:
        for c in COLUMNS:
            a, b = rows["ssprl"][c], rows["random"][c]
            delta[c] = None if a is None or b is None else a - b
    stage_info = {
        s.name: {
            "title": s.title,
            "seconds": state.get(s.name, {}).get("seconds"),
            "ran_now": s.name in ran_now,
            "command": shlex.join(["python", *s.argv]),
        }
        for s in stages
    }
    curves = {
        key: metric_curve(os.path.join(output_dir, f"pretrain_{key}"), "knn/mAP")
        for key in ("ssprl", "global")
    }
    curves = {k: v for k, v in curves.items() if v}
    curve_png = os.path.join(output_dir, "knn_curve.png")
    if curves:
        plot_knn_curves(curves, rows.get("random", {}).get("knn_map"), curve_png)
    vis_dir = os.path.join(output_dir, "visualizations")
    figures = sorted(
        os.path.join(vis_dir, f) for f in os.listdir(vis_dir) if f.endswith(".png")
    ) if os.path.isdir(vis_dir) else []
    results = {
        "size": "tiny" if tiny else "full",
        "dataset": "ssprl_demo_train / ssprl_demo_val (SYNTHETIC shapes on noise backgrounds)",
        "rows": rows,
        "delta_ssprl_minus_random": delta,
        "stages": stage_info,
        "total_seconds": round(sum(v["seconds"] or 0 for v in stage_info.values()), 1),
        "figures": figures,
        "knn_curves": curves,
        "knn_curve_png": curve_png if curves else None,
    }
    save_json(results, os.path.join(output_dir, "results.json"))
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(format_results_markdown(results))
    return results


def plot_knn_curves(
    curves: Dict[str, List[Tuple[int, float]]], random_level: Optional[float], path: str
) -> None:
    """PNG of the kNN monitor's mAP against pre-training iterations, one line per method, with
    the random-init level as a dashed line."""
    import matplotlib  # optional heavy dependency, only needed for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend above

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for key, points in curves.items():
        its, values = zip(*points)
        ax.plot(its, values, marker="o", markersize=3, label=ROWS[key][0])
    if random_level is not None:
        ax.axhline(random_level, color="grey", linestyle="--", label="Random init")
    ax.set_xlabel("pre-training iteration")
    ax.set_ylabel("kNN mAP on ssprl_demo_val (%)")
    ax.set_title("kNN monitor during demo pre-training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_results_markdown(results: Dict) -> str:
    """The results table (and stage times) as Markdown."""
    cols = list(COLUMNS)
    lines = [
        f"# ssprl_d2 demo results ({results['size']} size)",
        "",
        f"Data: {results['dataset']}. Linear mAP: frozen ResNet-18 backbone, linear multi-label "
        "head, mean over classes of average precision (%), on ssprl_demo_val. kNN mAP: weighted "
        "kNN vote (k=20, T=0.07) on the same frozen features. 10% fine-tune: the whole network "
        "on 10% of the training labels. Mask R-CNN: COCO box / mask AP on ssprl_demo_val after a "
        "short fine-tune.",
        "",
        "| weights | " + " | ".join(COLUMNS[c][0] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for key, row in results["rows"].items():
        lines.append(f"| {ROWS[key][0]} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    delta = results.get("delta_ssprl_minus_random") or {}
    if delta:
        cells = ["—" if delta.get(c) is None else f"{delta[c]:+.1f}" for c in cols]
        lines.append("| **SS-PRL − random** | " + " | ".join(cells) + " |")
    if results.get("knn_curve_png"):
        lines += ["", "kNN monitor curve of the pre-trainings: knn_curve.png."]
    lines += ["", "| stage | time | command |", "|---|---:|---|"]
    for name, info in results["stages"].items():
        secs = "—" if info["seconds"] is None else format_duration(info["seconds"])
        flag = "" if info["ran_now"] or info["seconds"] is None else " (earlier run)"
        lines.append(f"| {name} | {secs}{flag} | `{info['command']}` |")
    lines.append(f"| **total** | {format_duration(results['total_seconds'])} | |")
    if results["figures"]:
        lines += ["", "Figures: " + ", ".join(os.path.basename(p) for p in results["figures"])
                  + " (in visualizations/)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ seeds
def summarize_seeds(per_seed: Dict[int, Dict]) -> Dict:
    """Mean, standard deviation (n - 1), min and max of every (row, column) over the seeds, and
    per column the SS-PRL minus random and SS-PRL minus global-only deltas of each seed."""
    seeds = sorted(per_seed)
    cells: Dict[str, Dict[str, Dict]] = {}
    for row in ROWS:
        for col in COLUMNS:
            values = [per_seed[s]["rows"].get(row, {}).get(col) for s in seeds]
            if any(v is None for v in values):
                continue
            arr = np.asarray(values, dtype=np.float64)
            cells.setdefault(row, {})[col] = {
                "values": values, "mean": float(arr.mean()),
                "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
                "min": float(arr.min()), "max": float(arr.max()),
            }
    deltas: Dict[str, Dict[str, List[float]]] = {}
    for other in ("random", "global"):
        for col in COLUMNS:
            a, b = cells.get("ssprl", {}).get(col), cells.get(other, {}).get(col)
            if a and b:
                diffs = [x - y for x, y in zip(a["values"], b["values"])]
                deltas.setdefault(other, {})[col] = diffs
    return {"seeds": seeds, "cells": cells, "ssprl_minus": deltas}


def _seed_cell(stats: Optional[Dict]) -> str:
    if not stats:
        return "—"
    return f"{stats['mean']:.1f} ± {stats['std']:.1f} [{stats['min']:.1f}, {stats['max']:.1f}]"


def format_seeds_markdown(summary: Dict) -> str:
    """The per-seed summary as Markdown: mean ± std [min, max] per cell, then the deltas."""
    cols = list(COLUMNS)
    seeds = summary["seeds"]
    lines = [
        f"# ssprl_d2 demo over {len(seeds)} seeds ({', '.join(map(str, seeds))})",
        "",
        "Each cell: mean ± standard deviation [min, max] over the seeds (SEED of every stage).",
        "",
        "| weights | " + " | ".join(COLUMNS[c][0] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for row, stats in summary["cells"].items():
        cells = " | ".join(_seed_cell(stats.get(c)) for c in cols)
        lines.append(f"| {ROWS[row][0]} | " + cells + " |")
    for other, label in (("random", "random init"), ("global", "global-only")):
        deltas = summary["ssprl_minus"].get(other, {})
        if not deltas:
            continue
        parts = []
        for c in cols:
            d = deltas.get(c)
            parts.append("—" if not d else f"{sum(d) / len(d):+.1f} (" + ", ".join(
                f"{v:+.1f}" for v in d) + ")")
        lines.append(f"| **SS-PRL − {label}** (mean, per seed) | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ transfer
def _paper_cell(paper) -> str:
    if paper is None:
        return "—"
    if isinstance(paper, str):
        return paper
    return f"{paper:.1f}"


def _delta_cell(ours: Optional[float], paper) -> str:
    if ours is None or not isinstance(paper, (int, float)):
        return "—"
    return f"{ours - paper:+.1f}"


def build_transfer_markdown(
    protocols: Mapping[str, object],
    results: Mapping[str, Mapping[str, float]],
    weights: str = "",
    order: Optional[Sequence[str]] = None,
) -> str:
    """Markdown with one table per paper table, our numbers beside the paper's.

    Args:
        protocols: name -> protocol with attributes ``table``, ``title``, ``config``,
            ``metrics`` (metric names) and ``paper`` ({metric: number or text}).
        results: name -> {metric: value} of the protocols that ran (missing ones show "not run").
        weights: the evaluated weights, named in the header.
        order: protocols to show, in order (default: all, in ``protocols`` order).

    Returns:
        the Markdown text.
    """
    names = list(order) if order is not None else list(protocols)
    groups: "OrderedDict[str, list]" = OrderedDict()
    for name in names:
        groups.setdefault(protocols[name].table, []).append(name)
    lines = ["# SS-PRL transfer results", ""]
    if weights:
        lines += [f"Weights: `{weights}`", ""]
    lines += [
        "Paper: SS-PRL (Hsieh et al. 2022), COCO-pretrained ResNet-50. mAP = mean over classes "
        "of non-interpolated average precision (%); AP = COCO AP (%); mIoU = mean over classes "
        "of intersection over union (%).",
        "",
    ]
    for table, members in groups.items():
        metrics = []
        for name in members:
            metrics += [m for m in protocols[name].metrics if m not in metrics]
        header = ["protocol", "config"]
        for m in metrics:
            label = METRIC_LABELS.get(m, m)
            header += [f"{label} (ours)", f"{label} (paper)", "Δ"]
        lines += [f"## {table}", "", "| " + " | ".join(header) + " |",
                  "|---|---|" + "---:|" * (3 * len(metrics))]
        for name in members:
            p = protocols[name]
            ours = results.get(name)
            cells = [name, f"`{p.config}`"]
            for m in metrics:
                if m not in p.metrics:
                    cells += ["", "", ""]
                    continue
                value = None if ours is None else ours.get(m)
                paper = p.paper.get(m) if isinstance(p.paper, Mapping) else p.paper
                cells += [
                    "not run" if ours is None else _fmt(value),
                    _paper_cell(paper),
                    _delta_cell(value, paper),
                ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)

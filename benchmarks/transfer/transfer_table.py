#!/usr/bin/env python
"""Markdown tables of transfer results next to the SS-PRL paper's numbers (Tables 1-3 style).

Pure functions of (protocols, results); also a CLI that rebuilds the table of an output folder
of ``run_transfer.py`` from the ``*/transfer_result.json`` files it holds:

    python benchmarks/transfer/transfer_table.py output/transfer
"""
import argparse
import json
import os
import sys
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

# Column titles of the metrics the protocols report.
METRIC_LABELS = {
    "classification/mAP": "mAP",
    "bbox/AP": "box AP",
    "segm/AP": "mask AP",
    "sem_seg/mIoU": "mIoU",
}

RESULT_FILE = "transfer_result.json"


def _fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.1f}"


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


def build_markdown(
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


def load_results(output_dir: str, names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Metrics of the protocols of ``output_dir`` that have a ``transfer_result.json``."""
    results = {}
    for name in names:
        path = os.path.join(output_dir, name, RESULT_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                results[name] = json.load(f)["metrics"]
    return results


def main(argv=None) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from run_transfer import PROTOCOLS  # noqa: E402  (same folder)

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="output folder of run_transfer.py")
    args = parser.parse_args(argv)
    results = load_results(args.output_dir, list(PROTOCOLS))
    names = [n for n in PROTOCOLS if n in results]
    text = build_markdown(PROTOCOLS, results, order=names or None)
    with open(os.path.join(args.output_dir, "transfer_results.md"), "w") as f:
        f.write(text)
    print(text)
    return text


if __name__ == "__main__":
    main()

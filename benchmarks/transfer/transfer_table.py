#!/usr/bin/env python
"""Markdown tables of transfer results next to the SS-PRL paper's numbers (Tables 1-3 style).

Rebuilds the table of an output folder of ``run_transfer.py`` from the
``*/transfer_result.json`` files it holds (the table code is
``ssprl_d2.pipeline.tables.build_transfer_markdown``):

    python benchmarks/transfer/transfer_table.py output/transfer
"""
import argparse
import os

from ssprl_d2.pipeline.tables import build_transfer_markdown
from ssprl_d2.pipeline.transfer import PROTOCOLS, load_results


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="output folder of run_transfer.py")
    args = parser.parse_args(argv)
    results = load_results(args.output_dir, list(PROTOCOLS))
    names = [n for n in PROTOCOLS if n in results]
    text = build_transfer_markdown(PROTOCOLS, results, order=names or None)
    with open(os.path.join(args.output_dir, "transfer_results.md"), "w") as f:
        f.write(text)
    print(text)
    return text


if __name__ == "__main__":
    main()

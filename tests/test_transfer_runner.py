"""The transfer-benchmark runner: protocol table, commands, metric collection, skip-existing,
and the paper-style Markdown tables (a fake launcher stands in for tools/train_net.py)."""
import json
import os

import pytest

from ssprl_d2.pipeline import tables, transfer
from ssprl_d2.pipeline.stages import collect_metrics

from conftest import REPO_ROOT
from tool_utils import load_tool

run_transfer_cli = load_tool("benchmarks/transfer/run_transfer.py")
transfer_table_cli = load_tool("benchmarks/transfer/transfer_table.py")


def _write_metrics(run_dir, rows):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


class FakeLauncher:
    """Records every command and writes the metrics a real run would leave in OUTPUT_DIR."""

    def __init__(self, values=None, fail=()):
        self.calls = []
        self.values = values or {"classification/mAP": 55.0, "bbox/AP": 20.0, "segm/AP": 18.0}
        self.fail = set(fail)

    def __call__(self, argv, log_file):
        self.calls.append(list(argv))
        if argv[0] == "tools/convert_to_d2.py":
            open(argv[2], "wb").close()
            return 0
        out = argv[argv.index("OUTPUT_DIR") + 1]
        config = argv[argv.index("--config-file") + 1]
        if any(name in out for name in self.fail):
            return 1
        if "classification" in config:
            rows = [{"iteration": 9, "total_loss": 1.0},
                    {"iteration": 19, "classification/mAP": self.values["classification/mAP"]}]
        else:
            rows = [{"iteration": 19, "bbox/AP": self.values["bbox/AP"],
                     "segm/AP": self.values["segm/AP"], "total_loss": 0.5}]
        _write_metrics(out, rows)
        return 0


def test_every_protocol_config_exists_and_paper_numbers():
    for p in transfer.PROTOCOLS.values():
        assert os.path.isfile(os.path.join(REPO_ROOT, p.config)), p.config
    paper = {n: p.paper for n, p in transfer.PROTOCOLS.items()}
    assert paper["linear_coco"]["classification/mAP"] == 61.3
    assert paper["linear_voc07"]["classification/mAP"] == 80.5
    assert [paper[f"semi_coco_{k}"]["classification/mAP"] for k in (1, 10, 100)] == [
        45.1, 57.0, 62.9]
    assert paper["maskrcnn_15k"]["bbox/AP"] == "see paper Table 3"
    assert transfer.parse_protocols("all") == list(transfer.PROTOCOLS)
    with pytest.raises(ValueError, match="Unknown protocol"):
        transfer.parse_protocols("linear_coco,imagenet_knn")


def test_command_passes_launch_flags_weights_and_output():
    p = transfer.PROTOCOLS["maskrcnn_15k"]
    flags = transfer.launch_flags(8, 2, 1, "tcp://10.0.0.1:1234")
    argv = transfer.build_command(p, "/w/ssprl.pkl", "/out/maskrcnn_15k", flags,
                                  ["SOLVER.IMS_PER_BATCH", "8"])
    assert argv[:3] == ["tools/train_net.py", "--config-file", p.config]
    assert argv[3:11] == ["--num-gpus", "8", "--num-machines", "2", "--machine-rank", "1",
                          "--dist-url", "tcp://10.0.0.1:1234"]
    assert argv[-6:] == ["SOLVER.IMS_PER_BATCH", "8", "MODEL.WEIGHTS", "/w/ssprl.pkl",
                         "OUTPUT_DIR", "/out/maskrcnn_15k"]
    assert transfer.launch_flags() == []


def test_collect_metrics_last_value_prefixes_and_multilabel_file(tmp_path):
    run = str(tmp_path / "run")
    _write_metrics(run, [
        {"iteration": 9, "bbox/AP": 1.0},
        {"iteration": 19, "coco_val/bbox/AP": 3.0, "coco_val/segm/AP": 2.5},
        {"iteration": 19, "total_loss": 0.1},
    ])
    assert collect_metrics(run, ["bbox/AP", "segm/AP"]) == {"bbox/AP": 3.0, "segm/AP": 2.5}
    # The fast linear path writes no metrics.json, only the evaluator's json.
    fast = tmp_path / "fast" / "inference" / "ssprl_demo_val"
    fast.mkdir(parents=True)
    (fast / "multilabel_results.json").write_text(json.dumps({"mAP": 61.5, "AP-circle": 70.0}))
    assert collect_metrics(str(tmp_path / "fast"), ["classification/mAP"]) == {
        "classification/mAP": 61.5}
    assert collect_metrics(str(tmp_path / "nothing"), ["bbox/AP"]) == {}


def test_run_skips_existing_and_redo_reruns(tmp_path):
    out = str(tmp_path / "transfer")
    weights = tmp_path / "ckpt" / "model_final.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"not read by the fake launcher")
    launcher = FakeLauncher()
    names = ["linear_voc07", "semi_coco_10", "maskrcnn_15k"]
    logs = []
    results = transfer.run_transfer(str(weights), names, out, repo_root=REPO_ROOT,
                                    launcher=launcher, log=logs.append)
    # One conversion (a .pth is converted first), then one run per protocol.
    assert [c[0] for c in launcher.calls] == ["tools/convert_to_d2.py"] + ["tools/train_net.py"] * 3
    pkl = launcher.calls[0][2]
    assert pkl.endswith(".pkl") and all(pkl in c for c in launcher.calls[1:])
    assert results["maskrcnn_15k"] == {"bbox/AP": 20.0, "segm/AP": 18.0}
    assert results["linear_voc07"] == {"classification/mAP": 55.0}
    text = open(os.path.join(out, "transfer_results.md")).read()
    assert "| linear_voc07 |" in text and "80.5" in text and "-25.5" in text
    assert "see paper Table 3" in text
    saved = json.load(open(os.path.join(out, "maskrcnn_15k", "transfer_result.json")))
    assert saved["metrics"]["segm/AP"] == 18.0 and "OUTPUT_DIR" in saved["command"]

    # Second run: nothing is launched (not even the conversion), same results.
    again = FakeLauncher()
    assert transfer.run_transfer(str(weights), names, out, repo_root=REPO_ROOT,
                                 launcher=again, log=logs.append) == results
    assert again.calls == []
    # --redo relaunches everything.
    redo = FakeLauncher(values={"classification/mAP": 60.0, "bbox/AP": 1.0, "segm/AP": 1.0})
    out_redo = transfer.run_transfer(str(weights), names, out, repo_root=REPO_ROOT,
                                     launcher=redo, redo=True, log=logs.append)
    assert len(redo.calls) == 4 and out_redo["linear_voc07"]["classification/mAP"] == 60.0


def test_failed_protocol_is_reported_and_retried(tmp_path):
    out = str(tmp_path / "t")
    launcher = FakeLauncher(fail={"demo_maskrcnn"})
    logs = []
    results = transfer.run_transfer("w.pkl", ["demo_linear", "demo_maskrcnn"], out,
                                    repo_root=REPO_ROOT, launcher=launcher, log=logs.append)
    assert "demo_maskrcnn" not in results and "demo_linear" in results
    assert any("demo_maskrcnn FAILED" in line for line in logs)
    text = open(os.path.join(out, "transfer_results.md")).read()
    assert "| demo_maskrcnn |" in text and "not run" in text
    retry = FakeLauncher()
    transfer.run_transfer("w.pkl", ["demo_linear", "demo_maskrcnn"], out, repo_root=REPO_ROOT,
                          launcher=retry, log=logs.append)
    assert len(retry.calls) == 1 and "demo_maskrcnn" in retry.calls[0][-1]


def test_freshness_rule_of_the_stage_runner(tmp_path):
    """The demo's rule on the transfer side: a protocol is skipped while its command, config
    files and weights are unchanged; a changed command reruns the protocols (not the
    conversion); new weights rerun the conversion and, downstream of it, every protocol."""
    out = str(tmp_path / "fresh")
    weights = tmp_path / "ckpt" / "model_final.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"first")
    names = ["demo_linear", "demo_maskrcnn"]

    def run(opts=()):
        launcher = FakeLauncher()
        transfer.run_transfer(str(weights), names, out, repo_root=REPO_ROOT, opts=opts,
                              launcher=launcher, log=lambda *a: None)
        return [(c[0], c[-1]) for c in launcher.calls]

    assert len(run()) == 3
    assert run() == []
    state = json.load(open(os.path.join(out, "stages.json")))
    assert set(state) == {"convert", "demo_linear", "demo_maskrcnn"}
    assert state["demo_linear"]["configs"]  # the config file's fingerprint
    # Another command for every protocol: both rerun, the conversion is still fresh.
    rerun = run(opts=["SOLVER.MAX_ITER", "3"])
    assert [tool for tool, _ in rerun] == ["tools/train_net.py"] * 2
    assert run(opts=["SOLVER.MAX_ITER", "3"]) == []
    # New weights in the same file: conversion, then both protocols.
    weights.write_bytes(b"second, longer")
    assert [tool for tool, _ in run(opts=["SOLVER.MAX_ITER", "3"])] == [
        "tools/convert_to_d2.py", "tools/train_net.py", "tools/train_net.py"]


def test_library_refuses_a_folder_that_is_no_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="tools/train_net.py"):
        transfer.run_transfer("w.pkl", ["demo_linear"], str(tmp_path / "o"),
                              repo_root=str(tmp_path), dry_run=True)


def test_dry_run_prints_commands_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "dry"
    run_transfer_cli.main(["--weights", "w.pkl", "--protocols", "linear_coco,maskrcnn_15k",
                           "--output-dir", str(out), "--num-gpus", "8", "--dry-run"])
    printed = capsys.readouterr().out
    assert printed.count("tools/train_net.py") == 2 and "--num-gpus 8" in printed
    assert "configs/detection/mask_rcnn_R50_FPN_coco2014_15k.yaml" in printed
    assert not out.exists()


def test_table_builder_on_fixture_files(tmp_path):
    protocols = transfer.PROTOCOLS
    for name, metrics in {
        "linear_coco": {"classification/mAP": 60.05},
        "semi_coco_1": {"classification/mAP": 46.0},
        "demo_maskrcnn": {"bbox/AP": 12.34, "segm/AP": 10.0},
    }.items():
        os.makedirs(tmp_path / name)
        (tmp_path / name / "transfer_result.json").write_text(json.dumps({"metrics": metrics}))
    results = transfer.load_results(str(tmp_path), list(protocols))
    assert set(results) == {"linear_coco", "semi_coco_1", "demo_maskrcnn"}
    text = tables.build_transfer_markdown(protocols, results, weights="x.pkl")
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("| linear_coco |"))
    assert "| 60.0 | 61.3 | -1.2 |" in row  # ours, paper, delta
    voc = next(line for line in lines if line.startswith("| linear_voc07 |"))
    assert "not run" in voc and "80.5" in voc
    semi = next(line for line in lines if line.startswith("| semi_coco_1 |"))
    assert "| 46.0 | 45.1 | +0.9 |" in semi
    demo = next(line for line in lines if line.startswith("| demo_maskrcnn |"))
    assert "12.3" in demo and "10.0" in demo
    # One section per paper table, in order.
    heads = [line for line in lines if line.startswith("## ")]
    assert [h.split(" ")[1] + " " + h.split(" ")[2] for h in heads[:3]] == [
        "Table 1", "Table 2", "Table 3"]
    # The CLI rebuilds the same tables from the folder.
    assert "| 60.0 | 61.3 | -1.2 |" in transfer_table_cli.main([str(tmp_path)])

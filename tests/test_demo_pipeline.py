"""The end-to-end demo at toy size: every stage runs through the real tools (subprocesses), the
results table has every row, and a second run skips everything."""
import json
import os
import subprocess
import sys

import pytest

from ssprl_d2.pipeline.demo import plan_demo, run_demo
from ssprl_d2.pipeline.stages import collect_metrics
from ssprl_d2.pipeline.tables import format_results_markdown

from conftest import REPO_ROOT


def test_plan_uses_the_project_configs_and_tools(tmp_path):
    stages = plan_demo(str(tmp_path), tiny=False)
    names = [s.name for s in stages]
    assert names == [
        "pretrain_ssprl", "convert_ssprl", "linear_ssprl", "linear_random", "finetune_ssprl",
        "finetune_random", "maskrcnn_ssprl", "maskrcnn_random", "visualize", "pretrain_global",
        "convert_global", "linear_global", "finetune_global",
    ]
    by_name = {s.name: s for s in stages}
    for s in stages:
        assert os.path.isfile(os.path.join(REPO_ROOT, s.argv[0])), s.argv[0]
        if "--config-file" in s.argv:
            config = s.argv[s.argv.index("--config-file") + 1]
            assert os.path.isfile(os.path.join(REPO_ROOT, config)), config
    pkl = by_name["convert_ssprl"].argv[2]
    # The probes of both rows share one protocol; only the weights differ.
    ssprl, random = by_name["linear_ssprl"].argv, by_name["linear_random"].argv
    assert ssprl[ssprl.index("MODEL.WEIGHTS") + 1] == pkl
    assert random[random.index("MODEL.WEIGHTS") + 1] == ""
    strip = lambda a: a[: a.index("MODEL.WEIGHTS")]  # noqa: E731
    assert strip(ssprl) == strip(random)
    det = by_name["maskrcnn_ssprl"].argv
    assert strip(det) == strip(by_name["maskrcnn_random"].argv)
    fine = by_name["finetune_ssprl"].argv
    assert strip(fine) == strip(by_name["finetune_random"].argv)
    assert strip(fine) == strip(by_name["finetune_global"].argv)
    assert [s.name for s in plan_demo(str(tmp_path), skip_baseline=True)] == names[:9]
    # Every stage runs with the demo's SEED; another seed changes only that value.
    seeded = plan_demo(str(tmp_path), seed=2)
    for a, b in zip(stages, seeded):
        if "SEED" in a.argv:
            i = a.argv.index("SEED")
            assert a.argv[i + 1] == "0" and b.argv[i + 1] == "2"
            assert a.argv[:i] + a.argv[i + 2:] == b.argv[:i] + b.argv[i + 2:]


def test_results_markdown_has_rows_and_deltas():
    results = {
        "size": "full", "dataset": "demo",
        "rows": {
            "ssprl": {"linear_map": 62.0, "knn_map": 55.0, "finetune_map": 60.0, "box_ap": 20.0,
                      "mask_ap": 18.0},
            "random": {"linear_map": 50.0, "knn_map": 45.0, "finetune_map": 52.0, "box_ap": 15.5,
                       "mask_ap": None},
        },
        "delta_ssprl_minus_random": {"linear_map": 12.0, "knn_map": 10.0, "finetune_map": 8.0,
                                     "box_ap": 4.5, "mask_ap": None},
        "stages": {"pretrain_ssprl": {"seconds": 301.0, "ran_now": True, "command": "python x"}},
        "total_seconds": 301.0, "figures": [],
    }
    text = format_results_markdown(results)
    assert "| SS-PRL (configs/ssprl_demo.yaml) | 62.0 | 55.0 | 60.0 | 20.0 | 18.0 |" in text
    assert "| Random init | 50.0 | 45.0 | 52.0 | 15.5 | — |" in text
    assert "+12.0 | +10.0 | +8.0 | +4.5 | — |" in text and "5m01s" in text


def test_run_demo_needs_the_root_of_a_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="tools/train_net.py"):
        run_demo(str(tmp_path / "out"), repo_root=str(tmp_path), dry_run=True)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "out")
    lines = []
    results = run_demo(out, repo_root=REPO_ROOT, tiny=True, log=lines.append)
    return out, results, lines


def test_tiny_demo_end_to_end(tiny_demo):
    out, results, lines = tiny_demo
    rows = results["rows"]
    assert set(rows) == {"ssprl", "random", "global"}
    for key in ("ssprl", "random", "global"):
        for col in ("linear_map", "knn_map", "finetune_map"):
            assert 0.0 <= rows[key][col] <= 100.0, (key, col)
    for key in ("ssprl", "random"):
        assert rows[key]["box_ap"] is not None and rows[key]["mask_ap"] is not None, key
    assert rows["global"]["box_ap"] is None  # linear row only
    assert results["delta_ssprl_minus_random"]["linear_map"] == pytest.approx(
        rows["ssprl"]["linear_map"] - rows["random"]["linear_map"])
    # Files: table, json, figures, weights, logs.
    md = open(os.path.join(out, "results.md")).read()
    for label in ("SS-PRL (configs/ssprl_demo.yaml)", "Random init",
                  "Global-only baseline (scale 0)", "SS-PRL − random"):
        assert f"| {label}" in md or f"| **{label}**" in md, label
    assert json.load(open(os.path.join(out, "results.json")))["rows"] == rows
    pngs = sorted(os.path.basename(p) for p in results["figures"])
    assert pngs == ["cross_scale_prototypes.png", "prototypes_tsne_scale0.png",
                    "prototypes_tsne_scale2.png"]
    # The kNN monitor ran in both pre-trainings (every iteration at tiny size): one curve each,
    # drawn into knn_curve.png.
    assert set(results["knn_curves"]) == {"ssprl", "global"}
    assert all(len(points) >= 2 for points in results["knn_curves"].values())
    with open(os.path.join(out, "knn_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "knn_curve.png" in md
    assert os.path.getsize(os.path.join(out, "weights", "ssprl_demo_r18.pkl")) > 0
    assert all(v["seconds"] is not None for v in results["stages"].values())
    assert any("ETA" in line for line in lines) and any("results.md" in line for line in lines)
    # The probe read back equals the evaluator's own file.
    metrics = collect_metrics(os.path.join(out, "linear", "ssprl"), ["classification/mAP"])
    assert metrics["classification/mAP"] == pytest.approx(rows["ssprl"]["linear_map"])


def test_second_run_skips_every_stage(tiny_demo):
    out, results, _ = tiny_demo
    lines = []
    again = run_demo(out, repo_root=REPO_ROOT, tiny=True, log=lines.append)
    skipped = [line for line in lines if "skipped (--redo to rerun)" in line]
    assert len(skipped) == 13
    assert again["rows"] == results["rows"]
    assert all(not v["ran_now"] for v in again["stages"].values())
    # A changed command (full size instead of tiny) is not mistaken for a finished stage.
    dry = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "run_demo.py"), "--output-dir", out,
         "--dry-run"], capture_output=True, text=True, check=True,
    ).stdout
    assert "would skip" not in dry and dry.count("tools/train_net.py") == 7
    dry_tiny = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "run_demo.py"), "--output-dir", out,
         "--dry-run", "--tiny"], capture_output=True, text=True, check=True,
    ).stdout
    assert dry_tiny.count("would skip") == 13


def test_run_tool_logs_plain_text_and_reports_progress(tmp_path):
    from ssprl_d2.pipeline.stages import run_tool

    script = tmp_path / "fake_tool.py"
    script.write_text(
        "print('\\x1b[38;5;204mMODEL\\x1b[39m: x')\n"
        "print('[d2.utils.events]:  eta: 0:01:02  iter: 19  total_loss: 1.0')\n"
        "raise SystemExit(3)\n"
    )
    seen = []
    log = tmp_path / "logs" / "fake.log"
    assert run_tool([str(script)], str(log), REPO_ROOT, progress=seen.append) == 3
    text = log.read_text()
    assert "\x1b" not in text and "MODEL: x" in text
    assert seen == ["iter 20, eta 0:01:02"]


def test_editing_a_config_or_its_base_reruns_the_stage(tmp_path):
    from ssprl_d2.pipeline.stages import Stage as DemoStage
    from ssprl_d2.pipeline.stages import config_fingerprint, stages_to_run

    base, leaf = tmp_path / "Base.yaml", tmp_path / "leaf.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.1\n")
    leaf.write_text('_BASE_: "Base.yaml"\nSOLVER:\n  MAX_ITER: 10\n')
    product = tmp_path / "model_final.pth"
    product.write_text("x")
    stage = DemoStage(name="s", title="t", argv=["tools/train_net.py", "--config-file", str(leaf)],
                      product=str(product), estimate_s=1.0)
    state = {"s": {"argv": stage.argv, "configs": config_fingerprint(stage.argv, REPO_ROOT),
                   "finished": 1}}
    assert stages_to_run([stage], state, redo=False, repo_root=REPO_ROOT) == {"s": False}
    base.write_text("SOLVER:\n  BASE_LR: 0.2\n")  # an edit two files away
    assert stages_to_run([stage], state, redo=False, repo_root=REPO_ROOT) == {"s": True}
    assert config_fingerprint(["tools/convert_to_d2.py", "a", "b"], REPO_ROOT) is None


def test_seed_summary_gives_mean_spread_and_deltas(tmp_path):
    from ssprl_d2.pipeline.tables import format_seeds_markdown, summarize_seeds

    def result(ssprl, random, glob):
        return {"rows": {"ssprl": {"linear_map": ssprl}, "random": {"linear_map": random},
                         "global": {"linear_map": glob}}}

    summary = summarize_seeds({0: result(60.0, 50.0, 55.0), 1: result(62.0, 52.0, 58.0),
                               2: result(64.0, 51.0, 57.0)})
    cell = summary["cells"]["ssprl"]["linear_map"]
    assert cell["mean"] == pytest.approx(62.0) and cell["std"] == pytest.approx(2.0)
    assert (cell["min"], cell["max"]) == (60.0, 64.0)
    assert summary["ssprl_minus"]["random"]["linear_map"] == [10.0, 10.0, 13.0]
    assert summary["ssprl_minus"]["global"]["linear_map"] == [5.0, 4.0, 7.0]
    text = format_seeds_markdown(summary)
    assert "62.0 ± 2.0 [60.0, 64.0]" in text
    assert "| **SS-PRL − random init** (mean, per seed) | +11.0 (+10.0, +10.0, +13.0) |" in text

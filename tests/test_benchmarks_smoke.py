"""Smoke runs of the benchmark scripts at a tiny size: they run end to end and report ratios
against their in-process reference (no timing assertions)."""
import importlib.util
import json
import os

import pytest
from pretrain_utils import REPO, TINY_CONFIG, write_image_folder

# bench_data measures the paper config's input pipeline (its photometric ops included): only
# the crops shrink, to the sizes of TINY_CONFIG.
TINY_CROPS = [
    "INPUT.SSPRL.CROP_SIZES", "[32, 16]",
    "INPUT.SSPRL.NUM_CROPS", "[2, 2]",
    "INPUT.SSPRL.PYRAMID_RESIZE", "[32, 48]",
    "INPUT.SSPRL.PATCH_SIZES", "[16, 16]",
]
# bench_step on TINY_CONFIG, with queues (the step's queue path) and a fixed seed.
TINY_MODEL = [
    "MODEL.SSPRL.QUEUE.LENGTHS", "[8, 16, 36]",
    "SEED", "7",
]


def _load(name: str):
    path = os.path.join(REPO, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"ssprl_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    return write_image_folder(str(tmp_path_factory.mktemp("bench_images")), n=2)


def test_bench_data_reports_ratios(images, tmp_path, capsys):
    bench = _load("bench_data")
    out_json = str(tmp_path / "data.json")
    out = bench.main(
        ["--images", images, "--num-images", "2", "--rounds", "1", "--device-part", "cpu",
         "--device-batch", "2", "--json", out_json, *TINY_CROPS]
    )
    results = out["results"]
    assert set(results) >= {"reference", "loader/interpolate", "loader/roi_align",
                            "loader-torch/interpolate", "model/interpolate", "model/roi_align",
                            "device_part"}
    assert results["reference"]["ratio_vs_reference"] == pytest.approx(1.0)
    for name in ("loader/interpolate", "model/roi_align"):
        assert results[name]["ratio_vs_reference"] > 0
        assert results[name]["images_per_s_per_core"] > 0
    assert out["settings"]["crops_per_image"] == 4 + 8 + 18
    assert isinstance(out["settings"]["steady_heap"], bool)
    with open(out_json) as f:
        assert json.load(f)["results"].keys() == results.keys()
    printed = capsys.readouterr().out
    assert "vs ref" in printed and "model/interpolate (CPU part)" in printed


def test_bench_step_reports_ratios(images, tmp_path, capsys):
    bench = _load("bench_step")
    out = bench.main(
        ["--config-file", TINY_CONFIG, "--device", "cpu",
         "--depth", "18", "--batch-size", "2", "--iters", "1", "--warmup", "0",
         "--images", images, "--num-workers", "0", "--json", str(tmp_path / "step.json"),
         *TINY_MODEL]
    )
    runs = out["runs"]
    assert [r["label"] for r in runs] == ["reference", "measured"]
    assert runs[0]["group_crops"] == "none" and runs[1]["group_crops"] == "resolution"
    assert runs[0]["ratio_vs_reference"] == pytest.approx(1.0)
    for r in runs:
        assert r["images_per_s"] > 0 and r["peak_mib"] > 0
        assert r["end_to_end_images_per_s"] > 0
        assert r["last_loss"] == r["last_loss"]  # finite, not NaN
    assert out["ratio_vs_reference"] == runs[1]["ratio_vs_reference"]
    assert "vs ref" in capsys.readouterr().out


def test_bench_step_survives_an_out_of_memory_reference(images, monkeypatch, capsys):
    """A run that does not fit (the fp32 reference at the paper batch on a GPU) is reported
    as out of memory and the measured run still runs and reports."""
    import torch

    bench = _load("bench_step")
    real = bench.run_setting

    def run_setting(args, settings, files, label):
        if label == "reference":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(args, settings, files, label)

    monkeypatch.setattr(bench, "run_setting", run_setting)
    out = bench.main(
        ["--config-file", TINY_CONFIG, "--device", "cpu",
         "--depth", "18", "--batch-size", "2", "--iters", "1", "--warmup", "0",
         "--images", images, *TINY_MODEL]
    )
    ref, measured = out["runs"]
    assert ref["out_of_memory"] and "20.00 GiB" in ref["error"]
    assert measured["images_per_s"] > 0 and measured["ratio_vs_reference"] is None
    printed = capsys.readouterr().out
    assert "out of memory" in printed and "n/a" in printed

"""The end-to-end CPU demo: pre-train -> convert -> linear probe -> Mask R-CNN, with a table.

Every stage is one of the project's own command-line tools, run by the stage runner
(:mod:`ssprl_d2.pipeline.stages`) in the checkout given as ``repo_root``; a re-run only redoes
what changed. Results go to ``OUTPUT/results.json`` and ``OUTPUT/results.md`` (rewritten after
every stage, so an interrupted run still leaves a partial table).
"""
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

from .stages import (
    Stage,
    StageError,
    StageRunner,
    convert_stage,
    format_duration,
    save_json,
    tail,
)
from .tables import ROWS, format_seeds_markdown, summarize_seeds, write_results

__all__ = ["DemoError", "DemoSettings", "demo_settings", "plan_demo", "run_demo",
           "run_demo_seeds"]

PRETRAIN_CONFIG = "configs/ssprl_demo.yaml"
GLOBAL_CONFIG = "configs/demo/ssprl_demo_global_only.yaml"
TINY_PRETRAIN_CONFIG = "configs/quick_schedules/ssprl_pretrain_tiny.yaml"
TINY_GLOBAL_CONFIG = "configs/quick_schedules/ssprl_demo_global_only_tiny.yaml"
LINEAR_CONFIG = "configs/classification/linear_demo.yaml"
FINETUNE_CONFIG = "configs/classification/finetune_demo.yaml"
DETECTION_CONFIG = "configs/detection/mask_rcnn_demo.yaml"

# Worker processes only compete with the training threads on a 2-core machine (measured: 5-8x
# slower steps with 2 workers); every demo stage loads data in the main process.
_COMMON_OPTS = ["DATALOADER.NUM_WORKERS", "0"]
# Toy sizes of the transfer stages of --tiny (the pre-training ones are TINY_*_CONFIG).
_TINY_CLASSIFICATION = [
    "INPUT.CLASSIFICATION.TRAIN_CROP_SIZE", "32",
    "INPUT.CLASSIFICATION.TEST_RESIZE", "36",
    "INPUT.CLASSIFICATION.TEST_CROP_SIZE", "32",
]


class DemoError(StageError):
    """A demo stage failed; the message names it and shows the end of its log."""


@dataclass
class DemoSettings:
    """Sizes of the demo; :func:`demo_settings` gives the full and the ``--tiny`` versions."""

    pretrain_config: str
    global_config: str
    pretrain_opts: List[str]
    global_opts: List[str]
    linear_opts: List[str]
    finetune_opts: List[str]
    detection_opts: List[str]
    visualize_args: List[str]
    estimates: Dict[str, float] = field(default_factory=dict)


def demo_settings(tiny: bool) -> DemoSettings:
    """Configs and overrides of every stage: the measured full demo, or toy sizes for tests."""
    if not tiny:
        return DemoSettings(
            pretrain_config=PRETRAIN_CONFIG,
            global_config=GLOBAL_CONFIG,
            pretrain_opts=list(_COMMON_OPTS),
            global_opts=list(_COMMON_OPTS),
            # The linear_demo.yaml protocol for every row: frozen backbone (BN in eval mode),
            # head trained on cached features of the test transform.
            linear_opts=list(_COMMON_OPTS),
            finetune_opts=list(_COMMON_OPTS),
            # Half of mask_rcnn_demo.yaml's schedule (0.75 s / iteration on 2 cores).
            detection_opts=_COMMON_OPTS + ["SOLVER.MAX_ITER", "150", "SOLVER.STEPS", "(100, 133)"],
            visualize_args=["--size", "1200"],
            estimates={"pretrain": 520, "global": 210, "convert": 6, "linear": 25, "finetune": 20,
                       "detection": 125, "visualize": 15},
        )
    return DemoSettings(
        pretrain_config=TINY_PRETRAIN_CONFIG,
        global_config=TINY_GLOBAL_CONFIG,
        pretrain_opts=list(_COMMON_OPTS),
        global_opts=list(_COMMON_OPTS),
        linear_opts=_COMMON_OPTS + ["SOLVER.EPOCHS", "1", *_TINY_CLASSIFICATION],
        finetune_opts=_COMMON_OPTS + ["SOLVER.EPOCHS", "2", *_TINY_CLASSIFICATION],
        detection_opts=_COMMON_OPTS + [
            "SOLVER.MAX_ITER", "2",
            "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.STEPS", "()",
            "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MAX_SIZE_TRAIN", "96",
            "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "96",
        ],
        visualize_args=["--size", "320", "--max-images", "16", "--num-prototypes", "4",
                        "--per-prototype", "2"],
        estimates={"pretrain": 15, "global": 12, "convert": 5, "linear": 12, "finetune": 12,
                   "detection": 25, "visualize": 8},
    )


def plan_demo(
    output_dir: str, tiny: bool = False, skip_baseline: bool = False, seed: int = 0
) -> List[Stage]:
    """The stages of the demo, in run order (all paths absolute, tools and configs relative to
    the repository root).

    ``seed`` is the SEED of every stage (pre-training, probes, fine-tunes, Mask R-CNN); the
    10% label subset is the same for every seed.
    """
    out = os.path.abspath(output_dir)
    st = demo_settings(tiny)
    est = st.estimates
    stages: List[Stage] = []
    seed_opts = ["SEED", str(seed)]
    subset = os.path.join(out, "finetune", "demo_train_10pct_seed0.txt")

    def pretrain(key: str, config: str, opts: List[str], title: str, estimate: float):
        run_dir = os.path.join(out, f"pretrain_{key}")
        checkpoint = os.path.join(run_dir, "model_final.pth")
        pkl = os.path.join(out, "weights", f"{key}_demo_r18.pkl")
        stages.append(Stage(
            name=f"pretrain_{key}", title=title,
            argv=["tools/train_net.py", "--config-file", config, *opts, *seed_opts,
                  "OUTPUT_DIR", run_dir],
            product=checkpoint, estimate_s=estimate,
        ))
        stages.append(convert_stage(
            f"convert_{key}", f"convert the {key} checkpoint to Detectron2 .pkl", checkpoint,
            pkl, deps=[f"pretrain_{key}"], estimate_s=est["convert"],
        ))
        return pkl

    def transfer(kind: str, key: str, title: str, config: str, opts: List[str], weights: str,
                 deps: Sequence[str], columns: Sequence[str], extra: Sequence[str] = ()):
        run_dir = os.path.join(out, kind, key)
        tool = "tools/fast_linear_eval.py" if kind == "linear" else "tools/train_net.py"
        estimate = est["detection" if kind == "maskrcnn" else kind]
        stages.append(Stage(
            name=f"{kind}_{key}", title=f"{title}, {ROWS[key][0]}",
            argv=[tool, "--config-file", config, *opts, *seed_opts, *extra,
                  "MODEL.WEIGHTS", weights, "OUTPUT_DIR", run_dir],
            product=os.path.join(run_dir, "model_final.pth"), estimate_s=estimate,
            deps=deps, row=key, columns=columns, output_dir=run_dir,
        ))

    def linear(key: str, weights: str, deps: Sequence[str]):
        transfer("linear", key, "linear multi-label probe", LINEAR_CONFIG, st.linear_opts,
                 weights, deps, ["linear_map", "knn_map"])

    def finetune(key: str, weights: str, deps: Sequence[str]):
        transfer("finetune", key, "fine-tune on 10% of the labels", FINETUNE_CONFIG,
                 st.finetune_opts, weights, deps, ["finetune_map"],
                 extra=["DATASETS.CLASSIFICATION.LABEL_SUBSET", subset])

    def detection(key: str, weights: str, deps: Sequence[str]):
        transfer("maskrcnn", key, "Mask R-CNN fine-tune", DETECTION_CONFIG, st.detection_opts,
                 weights, deps, ["box_ap", "mask_ap"])

    pkl = pretrain("ssprl", st.pretrain_config, st.pretrain_opts, "SS-PRL demo pre-training",
                   est["pretrain"])
    linear("ssprl", pkl, ["convert_ssprl"])
    linear("random", "", [])
    finetune("ssprl", pkl, ["convert_ssprl"])
    finetune("random", "", [])
    detection("ssprl", pkl, ["convert_ssprl"])
    detection("random", "", [])
    vis_dir = os.path.join(out, "visualizations")
    stages.append(Stage(
        name="visualize", title="prototype figures (t-SNE, cross-scale)",
        argv=["tools/visualize_prototypes.py", "--checkpoint",
              os.path.join(out, "pretrain_ssprl", "model_final.pth"), "--dataset",
              "ssprl_demo_val", "--output-dir", vis_dir, *st.visualize_args],
        product=os.path.join(vis_dir, "prototypes_summary.json"), estimate_s=est["visualize"],
        deps=["pretrain_ssprl"],
    ))
    if not skip_baseline:
        gpkl = pretrain("global", st.global_config, st.global_opts,
                        "global-only baseline pre-training (scale 0, same budget)", est["global"])
        linear("global", gpkl, ["convert_global"])
        finetune("global", gpkl, ["convert_global"])
    return stages


def run_demo(
    output_dir: str,
    *,
    repo_root: str,
    tiny: bool = False,
    skip_baseline: bool = False,
    redo: bool = False,
    dry_run: bool = False,
    python: str = sys.executable,
    log: Callable[[str], None] = print,
    seed: int = 0,
) -> Dict:
    """Run (or resume) the demo and write ``results.json`` / ``results.md`` into output_dir.

    Args:
        output_dir: where every stage writes (created).
        repo_root: root of the checkout whose tools and configs run (the CLI passes its own).
        tiny: toy sizes (a few iterations), for tests.
        skip_baseline: leave out the global-only baseline pre-training row.
        redo: run every stage even when its outputs exist.
        dry_run: only print the commands.
        python: interpreter of the stages.
        log: where progress lines go.
        seed: SEED of every stage.

    Returns:
        the results dict written to ``results.json``.
    """
    out = os.path.abspath(output_dir)
    stages = plan_demo(out, tiny=tiny, skip_baseline=skip_baseline, seed=seed)
    runner = StageRunner(stages, out, repo_root, redo=redo, python=python)
    os.makedirs(out, exist_ok=True)
    ran_now: Dict[str, float] = {}
    start = time.perf_counter()
    est_done = 0.0  # estimates of the stages run so far, for the ETA's speed factor
    mode = "tiny" if tiny else "full"
    log(f"[demo] {len(stages)} stages ({mode} size) -> {out}")

    will_run = runner.will_run
    for i, stage in enumerate(stages, 1):
        header = f"[demo] stage {i}/{len(stages)} {stage.name}: {stage.title}"
        if dry_run:
            skip = "" if will_run[stage.name] else " (done, would skip)"
            log(f"{header}{skip}\n  " + shlex.join([python, *stage.argv]))
            continue
        if not will_run[stage.name]:
            log(f"{header} -- done before, skipped (--redo to rerun)")
            continue
        elapsed = time.perf_counter() - start
        remaining = sum(s.estimate_s for s in stages[i - 1 :] if will_run[s.name])
        # Scale the estimates by how fast this machine has been so far.
        factor = min(3.0, max(0.5, elapsed / est_done)) if est_done > 0 else 1.0
        log(f"{header} (elapsed {format_duration(elapsed)}, "
            f"ETA ~{format_duration(remaining * factor)})")
        log_file = runner.log_file(stage)
        last = [0.0]

        def progress(msg, name=stage.name):
            now = time.perf_counter()
            if now - last[0] >= 15:  # at most one line per 15 s per stage
                last[0] = now
                log(f"[demo]   {name}: {msg}")

        rc, seconds = runner.launch(stage, progress=progress)
        if rc != 0 or not os.path.isfile(stage.product):
            raise DemoError(
                f"stage {stage.name} failed (exit status {rc}); log: {log_file}\n"
                + tail(log_file)
            )
        est_done += stage.estimate_s
        ran_now[stage.name] = seconds
        runner.record(stage, seconds)
        log(f"[demo]   {stage.name} done in {format_duration(seconds)} (log: {log_file})")
        write_results(out, stages, runner.state, ran_now, tiny)

    if dry_run:
        return {}
    results = write_results(out, stages, runner.state, ran_now, tiny)
    total = time.perf_counter() - start
    log("")
    log(_read(os.path.join(out, "results.md")))
    log(f"[demo] finished in {format_duration(total)} ({len(ran_now)} stages run, "
        f"{len(stages) - len(ran_now)} skipped)")
    log(f"[demo] results: {os.path.join(out, 'results.md')} and results.json")
    log(f"[demo] figures: {os.path.join(out, 'visualizations')}")
    log(f"[demo] logs:    {os.path.join(out, 'logs')}")
    return results


def run_demo_seeds(
    output_dir: str, seeds: Sequence[int], *, repo_root: str,
    log: Callable[[str], None] = print, **kwargs
) -> Dict:
    """Run the demo once per seed (``output_dir/seed<N>``) and write the mean, spread and range
    of every cell to ``output_dir/seeds_results.{json,md}``.

    Args:
        output_dir: parent folder of the per-seed demo folders.
        seeds: the SEED values (each run is a whole demo, resumable like :func:`run_demo`).
        repo_root: as for :func:`run_demo`.
        kwargs: passed to :func:`run_demo` (``tiny``, ``skip_baseline``, ``redo``, ...).

    Returns:
        the dict written to ``seeds_results.json``.
    """
    out = os.path.abspath(output_dir)
    per_seed = {}
    for seed in seeds:
        log(f"[demo] ===== seed {seed} =====")
        per_seed[seed] = run_demo(os.path.join(out, f"seed{seed}"), repo_root=repo_root,
                                  seed=seed, log=log, **kwargs)
    if kwargs.get("dry_run"):
        return {}
    summary = summarize_seeds(per_seed)
    save_json(summary, os.path.join(out, "seeds_results.json"))
    with open(os.path.join(out, "seeds_results.md"), "w") as f:
        f.write(format_seeds_markdown(summary))
    log("")
    log(_read(os.path.join(out, "seeds_results.md")))
    return summary


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()

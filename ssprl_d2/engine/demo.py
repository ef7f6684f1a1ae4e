"""The end-to-end CPU demo: pre-train -> convert -> linear probe -> Mask R-CNN, with a table.

Every stage is one of the project's own command-line tools, run as a subprocess with the same
Python (exactly what a user would type), its output going to ``OUTPUT/logs/<stage>.log``. A stage
whose product exists and whose command is unchanged since it last succeeded is skipped (unless
``redo``), so a re-run only redoes what changed; a stage is also redone when a stage it depends on
ran after it. ``OUTPUT/stages.json`` records commands and run times.

Results go to ``OUTPUT/results.json`` and ``OUTPUT/results.md`` (rewritten after every stage, so
an interrupted run still leaves a partial table).
"""
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

__all__ = [
    "DemoStage",
    "collect_metrics",
    "format_duration",
    "plan_demo",
    "run_demo",
    "run_demo_seeds",
    "run_tool",
    "write_results",
]

# Rows of the results table: key -> (label, note).
ROWS = {
    "ssprl": ("SS-PRL (configs/ssprl_demo.yaml)", "pyramid pre-training on the demo images"),
    "random": ("Random init", "same protocol, no pre-training"),
    "global": ("Global-only baseline (scale 0)", "same budget, no pyramid / cross-scale terms"),
}
# Metric columns: key -> (column title, source metric name).
COLUMNS = {
    "linear_map": ("linear mAP", "classification/mAP"),
    "knn_map": ("kNN mAP", "knn/mAP"),
    "finetune_map": ("10% fine-tune mAP", "classification/mAP"),
    "box_ap": ("Mask R-CNN box AP", "bbox/AP"),
    "mask_ap": ("Mask R-CNN mask AP", "segm/AP"),
}
# Files next to metrics.json that hold a metric group: metric prefix -> file name under
# OUTPUT_DIR/inference/<dataset>/ (the fast linear path writes no metrics.json).
_RESULT_FILES = {"classification/": "multilabel_results.json", "knn/": "knn_results.json"}


@dataclass
class DemoStage:
    """One step of the demo.

    Attributes:
        name: unique id (also the log file name).
        title: what it does, for the progress log.
        argv: the tool and its arguments (run as ``python argv...`` in the repository root).
        product: file whose existence marks the stage as done.
        estimate_s: expected seconds on 2 CPU cores, for the ETA.
        deps: stages whose products it reads (it is redone when they ran after it).
        row, columns: which results-table cells its metrics fill (``COLUMNS`` keys).
        output_dir: where its metrics are read from (default: the product's folder).
    """

    name: str
    title: str
    argv: List[str]
    product: str
    estimate_s: float
    deps: Sequence[str] = ()
    row: Optional[str] = None
    columns: Sequence[str] = ()
    output_dir: str = ""


@dataclass
class DemoSettings:
    """Sizes of the demo; :func:`demo_settings` gives the full and the ``--tiny`` versions."""

    pretrain_opts: List[str]
    global_opts: List[str]
    linear_opts: List[str]
    finetune_opts: List[str]
    detection_opts: List[str]
    visualize_args: List[str]
    estimates: Dict[str, float] = field(default_factory=dict)


PRETRAIN_CONFIG = "configs/ssprl_demo.yaml"
GLOBAL_CONFIG = "configs/demo/ssprl_demo_global_only.yaml"
LINEAR_CONFIG = "configs/classification/linear_demo.yaml"
FINETUNE_CONFIG = "configs/classification/finetune_demo.yaml"
DETECTION_CONFIG = "configs/detection/mask_rcnn_demo.yaml"

# Worker processes only compete with the training threads on a 2-core machine (measured: 5-8x
# slower steps with 2 workers); every demo stage loads data in the main process.
_COMMON_OPTS = ["DATALOADER.NUM_WORKERS", "0"]


def demo_settings(tiny: bool) -> DemoSettings:
    """Overrides of every stage: the measured full demo, or toy sizes for tests."""
    if not tiny:
        return DemoSettings(
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
    pyramid = [
        "INPUT.SSPRL.CROP_SIZES", "[32, 16]",
        "INPUT.SSPRL.PYRAMID_RESIZE", "[32, 48]",
        "INPUT.SSPRL.PATCH_SIZES", "[16, 16]",
        "MODEL.SSPRL.NUM_PROTOTYPES", "[8, 6, 6]",
        "MODEL.SSPRL.QUEUE.LENGTHS", "[0, 0, 0]",
    ]
    toy = [
        "SOLVER.MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "MODEL.SSPRL.HEAD_HIDDEN_DIM", "32",
        "MODEL.SSPRL.HEAD_OUT_DIM", "16",
        "MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "1",
        "TEST.KNN.PERIOD", "1",
        "TEST.KNN.MAX_IMAGES", "16",
        "INPUT.CLASSIFICATION.TEST_RESIZE", "36",
        "INPUT.CLASSIFICATION.TEST_CROP_SIZE", "32",
    ]
    global_only = [
        "INPUT.SSPRL.CROP_SIZES", "[32, 16]",
        "MODEL.SSPRL.NUM_PROTOTYPES", "[8]",
        "MODEL.SSPRL.QUEUE.LENGTHS", "[0]",
    ]
    return DemoSettings(
        pretrain_opts=_COMMON_OPTS + toy + pyramid,
        global_opts=_COMMON_OPTS + toy + global_only,
        linear_opts=_COMMON_OPTS + [
            "SOLVER.EPOCHS", "1",
            "INPUT.CLASSIFICATION.TRAIN_CROP_SIZE", "32",
            "INPUT.CLASSIFICATION.TEST_RESIZE", "36",
            "INPUT.CLASSIFICATION.TEST_CROP_SIZE", "32",
        ],
        finetune_opts=_COMMON_OPTS + [
            "SOLVER.EPOCHS", "2",
            "INPUT.CLASSIFICATION.TRAIN_CROP_SIZE", "32",
            "INPUT.CLASSIFICATION.TEST_RESIZE", "36",
            "INPUT.CLASSIFICATION.TEST_CROP_SIZE", "32",
        ],
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
) -> List[DemoStage]:
    """The stages of the demo, in run order (all paths absolute).

    ``seed`` is the SEED of every stage (pre-training, probes, fine-tunes, Mask R-CNN); the
    10% label subset is the same for every seed.
    """
    out = os.path.abspath(output_dir)
    st = demo_settings(tiny)
    est = st.estimates
    stages: List[DemoStage] = []
    seed_opts = ["SEED", str(seed)]
    subset = os.path.join(out, "finetune", "demo_train_10pct_seed0.txt")

    def pretrain(key: str, config: str, opts: List[str], title: str, estimate: float):
        run_dir = os.path.join(out, f"pretrain_{key}")
        pkl = os.path.join(out, "weights", f"{key}_demo_r18.pkl")
        stages.append(DemoStage(
            name=f"pretrain_{key}", title=title,
            argv=["tools/train_net.py", "--config-file", config, *opts, *seed_opts,
                  "OUTPUT_DIR", run_dir],
            product=os.path.join(run_dir, "model_final.pth"), estimate_s=estimate,
        ))
        stages.append(DemoStage(
            name=f"convert_{key}", title=f"convert the {key} checkpoint to Detectron2 .pkl",
            argv=["tools/convert_to_d2.py", os.path.join(run_dir, "model_final.pth"), pkl],
            product=pkl, estimate_s=est["convert"], deps=[f"pretrain_{key}"],
        ))
        return pkl

    def linear(key: str, weights: str, deps: Sequence[str]):
        run_dir = os.path.join(out, "linear", key)
        stages.append(DemoStage(
            name=f"linear_{key}", title=f"linear multi-label probe, {ROWS[key][0]}",
            argv=["tools/fast_linear_eval.py", "--config-file", LINEAR_CONFIG, *st.linear_opts,
                  *seed_opts, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", run_dir],
            product=os.path.join(run_dir, "model_final.pth"), estimate_s=est["linear"],
            deps=deps, row=key, columns=["linear_map", "knn_map"], output_dir=run_dir,
        ))

    def finetune(key: str, weights: str, deps: Sequence[str]):
        run_dir = os.path.join(out, "finetune", key)
        stages.append(DemoStage(
            name=f"finetune_{key}", title=f"fine-tune on 10% of the labels, {ROWS[key][0]}",
            argv=["tools/train_net.py", "--config-file", FINETUNE_CONFIG, *st.finetune_opts,
                  *seed_opts, "DATASETS.SSPRL.LABEL_SUBSET", subset,
                  "MODEL.WEIGHTS", weights, "OUTPUT_DIR", run_dir],
            product=os.path.join(run_dir, "model_final.pth"), estimate_s=est["finetune"],
            deps=deps, row=key, columns=["finetune_map"], output_dir=run_dir,
        ))

    def detection(key: str, weights: str, deps: Sequence[str]):
        run_dir = os.path.join(out, "maskrcnn", key)
        stages.append(DemoStage(
            name=f"maskrcnn_{key}", title=f"Mask R-CNN fine-tune, {ROWS[key][0]}",
            argv=["tools/train_net.py", "--config-file", DETECTION_CONFIG, *st.detection_opts,
                  *seed_opts, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", run_dir],
            product=os.path.join(run_dir, "model_final.pth"), estimate_s=est["detection"],
            deps=deps, row=key, columns=["box_ap", "mask_ap"], output_dir=run_dir,
        ))

    pkl = pretrain("ssprl", PRETRAIN_CONFIG, st.pretrain_opts, "SS-PRL demo pre-training",
                   est["pretrain"])
    linear("ssprl", pkl, ["convert_ssprl"])
    linear("random", "", [])
    finetune("ssprl", pkl, ["convert_ssprl"])
    finetune("random", "", [])
    detection("ssprl", pkl, ["convert_ssprl"])
    detection("random", "", [])
    vis_dir = os.path.join(out, "visualizations")
    stages.append(DemoStage(
        name="visualize", title="prototype figures (t-SNE, cross-scale)",
        argv=["tools/visualize_prototypes.py", "--checkpoint",
              os.path.join(out, "pretrain_ssprl", "model_final.pth"), "--dataset",
              "ssprl_demo_val", "--output-dir", vis_dir, *st.visualize_args],
        product=os.path.join(vis_dir, "prototypes_summary.json"), estimate_s=est["visualize"],
        deps=["pretrain_ssprl"],
    ))
    if not skip_baseline:
        gpkl = pretrain("global", GLOBAL_CONFIG, st.global_opts,
                        "global-only baseline pre-training (scale 0, same budget)", est["global"])
        linear("global", gpkl, ["convert_global"])
        finetune("global", gpkl, ["convert_global"])
    return stages


# ------------------------------------------------------------------------------------ metrics
def _metric_from_row(row: Dict, key: str) -> Optional[float]:
    if key in row:
        return row[key]
    # Several test sets: Detectron2 prefixes the dataset name ("ds/bbox/AP").
    hits = [v for k, v in row.items() if k.endswith("/" + key)]
    return hits[0] if len(hits) == 1 else None


def collect_metrics(output_dir: str, keys: Sequence[str]) -> Dict[str, float]:
    """The last value of each metric of a finished run, or {} for missing ones.

    Looks in ``output_dir/metrics.json`` (Detectron2's JSON writer, one dict per line; the last
    line holding the key wins), then, for "classification/*", in the multi-label evaluator's
    ``output_dir/inference/<dataset>/multilabel_results.json`` (written by the fast linear path,
    which has no metrics.json).
    """
    found: Dict[str, float] = {}
    metrics_file = os.path.join(output_dir, "metrics.json")
    if os.path.isfile(metrics_file):
        with open(metrics_file) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for key in keys:
            for row in reversed(rows):
                value = _metric_from_row(row, key)
                if value is not None:
                    found[key] = float(value)
                    break
    inference = os.path.join(output_dir, "inference")
    for prefix, file_name in _RESULT_FILES.items():
        missing = [k for k in keys if k not in found and k.startswith(prefix)]
        if not missing or not os.path.isdir(inference):
            continue
        files = sorted(os.path.join(inference, d, file_name) for d in os.listdir(inference))
        files = [p for p in files if os.path.isfile(p)]
        if len(files) == 1:
            with open(files[0]) as f:
                results = json.load(f)
            for key in missing:
                value = results.get(key[len(prefix):])
                if value is not None:
                    found[key] = float(value)
    return found


def metric_curve(output_dir: str, key: str) -> List[Tuple[int, float]]:
    """(iteration, value) of every line of ``output_dir/metrics.json`` that holds ``key``
    (iterations counted from 1)."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return []
    points = []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if key in row:
                    points.append((int(row["iteration"]) + 1, float(row[key])))
    return points


# ------------------------------------------------------------------------------------ running
def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


_ETA_RE = re.compile(r"eta: (\S+)\s+iter: (\d+)")


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def run_tool(
    argv: Sequence[str], log_file: str, python: str = sys.executable,
    progress: Optional[Callable[[str], None]] = None,
) -> int:
    """Run ``python argv...`` in the repository root, output appended to ``log_file``.

    ``progress`` receives a short line for every Detectron2 "eta" report of the tool.

    Returns:
        the exit status.
    """
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_file, "w") as log:
        log.write("$ " + shlex.join([python, *argv]) + "\n")
        log.flush()
        proc = subprocess.Popen(
            [python, *argv], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        for line in proc.stdout:
            log.write(_ANSI_RE.sub("", line))  # Detectron2 colours its config dump
            match = _ETA_RE.search(line)
            if match and progress is not None:
                progress(f"iter {int(match.group(2)) + 1}, eta {match.group(1)}")
        return proc.wait()


def _tail(path: str, n: int = 30) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


class DemoError(RuntimeError):
    """A stage failed; the message names it and shows the end of its log."""


def _load_json(path: str) -> Dict:
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _dump_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def run_demo(
    output_dir: str,
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
    os.makedirs(out, exist_ok=True)
    stages = plan_demo(out, tiny=tiny, skip_baseline=skip_baseline, seed=seed)
    state_file = os.path.join(out, "stages.json")
    state = _load_json(state_file)
    ran_now: Dict[str, float] = {}
    start = time.perf_counter()
    est_done = 0.0  # estimates of the stages run so far, for the ETA's speed factor
    mode = "tiny" if tiny else "full"
    log(f"[demo] {len(stages)} stages ({mode} size) -> {out}")

    will_run = _stages_to_run(stages, state, redo)
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
        log_file = os.path.join(out, "logs", f"{stage.name}.log")
        t0 = time.perf_counter()
        last = [0.0]

        def progress(msg, name=stage.name):
            now = time.perf_counter()
            if now - last[0] >= 15:  # at most one line per 15 s per stage
                last[0] = now
                log(f"[demo]   {name}: {msg}")

        rc = run_tool(stage.argv, log_file, python=python, progress=progress)
        seconds = time.perf_counter() - t0
        if rc != 0 or not os.path.isfile(stage.product):
            raise DemoError(
                f"stage {stage.name} failed (exit status {rc}); log: {log_file}\n"
                + _tail(log_file)
            )
        est_done += stage.estimate_s
        ran_now[stage.name] = seconds
        state[stage.name] = {"argv": stage.argv, "configs": config_fingerprint(stage.argv),
                             "seconds": round(seconds, 1), "finished": time.time()}
        _dump_json(state, state_file)
        log(f"[demo]   {stage.name} done in {format_duration(seconds)} (log: {log_file})")
        write_results(out, stages, state, ran_now, tiny)

    if dry_run:
        return {}
    results = write_results(out, stages, state, ran_now, tiny)
    total = time.perf_counter() - start
    log("")
    log(_read(os.path.join(out, "results.md")))
    log(f"[demo] finished in {format_duration(total)} ({len(ran_now)} stages run, "
        f"{len(stages) - len(ran_now)} skipped)")
    log(f"[demo] results: {os.path.join(out, 'results.md')} and results.json")
    log(f"[demo] figures: {os.path.join(out, 'visualizations')}")
    log(f"[demo] logs:    {os.path.join(out, 'logs')}")
    return results


def _stages_to_run(stages: Sequence[DemoStage], state: Dict, redo: bool) -> Dict[str, bool]:
    """Which stages run: all with ``redo``; else those without their product, with another
    command or other config-file contents than last time, or downstream of a stage that runs or
    ran after them."""
    will_run: Dict[str, bool] = {}
    for stage in stages:
        prev = state.get(stage.name, {})
        stale = any(
            will_run.get(d) or state.get(d, {}).get("finished", 0) > prev.get("finished", 0)
            for d in stage.deps
        )
        done = (
            os.path.isfile(stage.product)
            and prev.get("argv") == stage.argv
            and prev.get("configs") == config_fingerprint(stage.argv)
            and not stale
        )
        will_run[stage.name] = redo or not done
    return will_run


def config_fingerprint(argv: Sequence[str]) -> Optional[str]:
    """SHA-1 of the contents of the ``--config-file`` in ``argv`` and of its ``_BASE_`` chain
    (None without a config file), so that editing a YAML reruns the stages that use it."""
    if "--config-file" not in argv:
        return None
    digest = hashlib.sha1()
    todo = [os.path.join(REPO_ROOT, argv[list(argv).index("--config-file") + 1])]
    while todo:
        path = todo.pop()
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            digest.update(f"missing:{path}".encode())
            continue
        digest.update(data)
        match = re.search(rb"^_BASE_:\s*[\"']?([^\"'\s#]+)", data, re.M)
        if match:
            todo.append(os.path.join(os.path.dirname(path), match.group(1).decode()))
    return digest.hexdigest()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


# ------------------------------------------------------------------------------------ table
def _fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.1f}"


def write_results(
    output_dir: str, stages: Sequence[DemoStage], state: Dict, ran_now: Dict[str, float],
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
    _dump_json(results, os.path.join(output_dir, "results.json"))
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
    import matplotlib.pyplot as plt

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
def run_demo_seeds(
    output_dir: str, seeds: Sequence[int], log: Callable[[str], None] = print, **kwargs
) -> Dict:
    """Run the demo once per seed (``output_dir/seed<N>``) and write the mean, spread and range
    of every cell to ``output_dir/seeds_results.{json,md}``.

    Args:
        output_dir: parent folder of the per-seed demo folders.
        seeds: the SEED values (each run is a whole demo, resumable like :func:`run_demo`).
        kwargs: passed to :func:`run_demo` (``tiny``, ``skip_baseline``, ``redo``, ...).

    Returns:
        the dict written to ``seeds_results.json``.
    """
    out = os.path.abspath(output_dir)
    per_seed = {}
    for seed in seeds:
        log(f"[demo] ===== seed {seed} =====")
        per_seed[seed] = run_demo(os.path.join(out, f"seed{seed}"), seed=seed, log=log, **kwargs)
    if kwargs.get("dry_run"):
        return {}
    summary = summarize_seeds(per_seed)
    _dump_json(summary, os.path.join(out, "seeds_results.json"))
    with open(os.path.join(out, "seeds_results.md"), "w") as f:
        f.write(format_seeds_markdown(summary))
    log("")
    log(_read(os.path.join(out, "seeds_results.md")))
    return summary


def summarize_seeds(per_seed: Dict[int, Dict]) -> Dict:
    """Mean, standard deviation (n - 1), min and max of every (row, column) over the seeds, and
    per column the SS-PRL minus random and SS-PRL minus global-only deltas of each seed."""
    import numpy as np  # only for the summary statistics

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

    def cell(stats: Optional[Dict]) -> str:
        if not stats:
            return "—"
        return f"{stats['mean']:.1f} ± {stats['std']:.1f} [{stats['min']:.1f}, {stats['max']:.1f}]"

    for row, stats in summary["cells"].items():
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(cell(stats.get(c)) for c in cols) + " |")
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

"""The stage runner of the demo and the transfer benchmark.

A stage is one of the project's command-line tools, run as a subprocess with the same Python
(exactly what a user would type) in the root of the checkout passed as ``repo_root``, its output
going to a log file (``OUTPUT/logs/<stage>.log`` by default).

The one freshness rule: a stage is skipped when its product exists and its fingerprint (the
command, the contents of its ``--config-file`` and that file's ``_BASE_`` chain, and the size and
time of its input files) is the one recorded when it last succeeded, and no stage it depends on
ran after it; ``redo`` runs every stage. ``OUTPUT/stages.json`` records those fingerprints and
the run times.
"""
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "Stage",
    "StageError",
    "StageRunner",
    "check_repo_root",
    "collect_metrics",
    "config_fingerprint",
    "convert_stage",
    "format_duration",
    "metric_curve",
    "run_tool",
    "stages_to_run",
]

STATE_FILE = "stages.json"
CONVERT_TOOL = "tools/convert_to_d2.py"
# Files next to metrics.json that hold a metric group: metric prefix -> file name under
# OUTPUT_DIR/inference/<dataset>/ (the fast linear path writes no metrics.json).
_RESULT_FILES = {"classification/": "multilabel_results.json", "knn/": "knn_results.json"}
_ETA_RE = re.compile(r"eta: (\S+)\s+iter: (\d+)")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

Launcher = Callable[[List[str], str], int]


@dataclass
class Stage:
    """One step of a pipeline.

    Attributes:
        name: unique id (also the default log file name).
        title: what it does, for the progress log.
        argv: the tool and its arguments (run as ``python argv...`` in the repository root).
        product: file whose existence marks the stage as done.
        estimate_s: expected seconds, for an ETA.
        deps: stages whose products it reads (it is redone when they ran after it).
        inputs: files it reads that no stage makes (it is redone when they change).
        row, columns: which results-table cells its metrics fill.
        output_dir: where its metrics are read from.
        log_file: where its output goes (default ``OUTPUT/logs/<name>.log``).
    """

    name: str
    title: str
    argv: List[str]
    product: str
    estimate_s: float = 0.0
    deps: Sequence[str] = ()
    inputs: Sequence[str] = ()
    row: Optional[str] = None
    columns: Sequence[str] = ()
    output_dir: str = ""
    log_file: str = ""


class StageError(RuntimeError):
    """A stage failed; the message names it and shows the end of its log."""


def convert_stage(name: str, title: str, checkpoint: str, pkl: str, deps: Sequence[str] = (),
                  inputs: Sequence[str] = (), estimate_s: float = 0.0) -> Stage:
    """The conversion of an ssprl_d2 checkpoint to Detectron2 weights (tools/convert_to_d2.py)."""
    return Stage(name=name, title=title, argv=[CONVERT_TOOL, checkpoint, pkl], product=pkl,
                 estimate_s=estimate_s, deps=deps, inputs=inputs)


def check_repo_root(repo_root: str) -> str:
    """``repo_root`` as an absolute path, or an error if it holds no ``tools/train_net.py``."""
    root = os.path.abspath(str(repo_root))
    if not os.path.isfile(os.path.join(root, "tools", "train_net.py")):
        raise FileNotFoundError(
            f"{root} is not an ssprl_d2 checkout (no tools/train_net.py there): pass the root "
            "of the repository whose tools the stages should run as repo_root"
        )
    return root


# ------------------------------------------------------------------------------------ freshness
def config_fingerprint(argv: Sequence[str], repo_root: str) -> Optional[str]:
    """SHA-1 of the contents of the ``--config-file`` in ``argv`` (relative to ``repo_root``) and
    of its ``_BASE_`` chain (None without a config file), so that editing a YAML reruns the
    stages that use it."""
    if "--config-file" not in argv:
        return None
    digest = hashlib.sha1()
    todo = [os.path.join(repo_root, argv[list(argv).index("--config-file") + 1])]
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


def input_fingerprint(paths: Sequence[str]) -> Optional[List]:
    """[path, size, mtime_ns] of each input file (None for a stage without inputs)."""
    if not paths:
        return None
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append([path, st.st_size, st.st_mtime_ns])
        except OSError:
            stamps.append([path, None, None])
    return stamps


def stages_to_run(stages: Sequence[Stage], state: Dict, redo: bool,
                  repo_root: str) -> Dict[str, bool]:
    """Which stages run: all with ``redo``; else those without their product, with another
    command, config-file contents or inputs than last time, or downstream of a stage that runs
    or ran after them."""
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
            and prev.get("configs") == config_fingerprint(stage.argv, repo_root)
            and prev.get("inputs") == input_fingerprint(stage.inputs)
            and not stale
        )
        will_run[stage.name] = redo or not done
    return will_run


# ------------------------------------------------------------------------------------ running
def run_tool(
    argv: Sequence[str], log_file: str, repo_root: str, python: str = sys.executable,
    progress: Optional[Callable[[str], None]] = None,
) -> int:
    """Run ``python argv...`` in ``repo_root`` (also first on its PYTHONPATH), output written to
    ``log_file``.

    ``progress`` receives a short line for every Detectron2 "eta" report of the tool.

    Returns:
        the exit status.
    """
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_file, "w") as log:
        log.write("$ " + shlex.join([python, *argv]) + "\n")
        log.flush()
        proc = subprocess.Popen(
            [python, *argv], cwd=repo_root, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        for line in proc.stdout:
            log.write(_ANSI_RE.sub("", line))  # Detectron2 colours its config dump
            match = _ETA_RE.search(line)
            if match and progress is not None:
                progress(f"iter {int(match.group(2)) + 1}, eta {match.group(1)}")
        return proc.wait()


class StageRunner:
    """Runs the stages of one output folder and remembers their successes in ``stages.json``.

    Args:
        stages: the stages, in run order.
        output_dir: the folder of the state file and of the default logs.
        repo_root: root of the checkout whose tools run (checked by :func:`check_repo_root`).
        redo: run every stage.
        python: interpreter of the tools.
        launcher: ``launcher(argv, log_file) -> exit status`` instead of :func:`run_tool`.
    """

    def __init__(self, stages: Sequence[Stage], output_dir: str, repo_root: str,
                 redo: bool = False, python: str = sys.executable,
                 launcher: Optional[Launcher] = None):
        self.repo_root = check_repo_root(repo_root)
        self.stages = list(stages)
        self.output_dir = os.path.abspath(output_dir)
        self.state_file = os.path.join(self.output_dir, STATE_FILE)
        self.state = load_json(self.state_file)
        self.python = python
        self.launcher = launcher
        self.will_run = stages_to_run(self.stages, self.state, redo, self.repo_root)

    def log_file(self, stage: Stage) -> str:
        return stage.log_file or os.path.join(self.output_dir, "logs", f"{stage.name}.log")

    def launch(self, stage: Stage,
               progress: Optional[Callable[[str], None]] = None) -> Tuple[int, float]:
        """Run the stage's tool (its last success is forgotten until it succeeds again).

        Returns:
            (exit status, seconds).
        """
        if self.state.pop(stage.name, None) is not None:
            save_json(self.state, self.state_file)
        os.makedirs(os.path.dirname(stage.product), exist_ok=True)
        log_file = self.log_file(stage)
        start = time.perf_counter()
        if self.launcher is not None:
            rc = self.launcher(list(stage.argv), log_file)
        else:
            rc = run_tool(stage.argv, log_file, self.repo_root, python=self.python,
                          progress=progress)
        return rc, time.perf_counter() - start

    def record(self, stage: Stage, seconds: float) -> None:
        """Remember a success: the fingerprint that makes a later run skip the stage."""
        entry = {"argv": stage.argv, "configs": config_fingerprint(stage.argv, self.repo_root),
                 "seconds": round(seconds, 1), "finished": time.time()}
        if stage.inputs:
            entry["inputs"] = input_fingerprint(stage.inputs)
        self.state[stage.name] = entry
        save_json(self.state, self.state_file)


def tail(path: str, n: int = 30) -> str:
    """The last ``n`` lines of a log ("" if unreadable)."""
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def load_json(path: str) -> Dict:
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def save_json(obj, path: str) -> None:
    """Write ``obj`` as JSON through a temporary file (never a half-written file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


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
    line holding the key wins), then, for "classification/*" and "knn/*", in the evaluators'
    ``output_dir/inference/<dataset>/*_results.json`` (written by the fast linear path, which
    has no metrics.json).
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


# ------------------------------------------------------------------------------------ formatting
def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _fmt(value: Optional[float]) -> str:
    """A table cell: one decimal, or a dash for a missing value."""
    return "—" if value is None else f"{value:.1f}"

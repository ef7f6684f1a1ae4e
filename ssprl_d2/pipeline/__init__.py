"""Orchestration: the demo and the transfer benchmark as stages of the project's own tools.

``stages`` is the one stage runner (freshness, subprocesses, state, metrics), ``tables`` the
result tables, ``demo`` and ``transfer`` declare their stages on it. The tools run are those of
the checkout passed as ``repo_root`` (the command-line scripts pass their own).
"""
from .demo import DemoError, run_demo, run_demo_seeds  # noqa: F401
from .stages import Stage, StageError, StageRunner  # noqa: F401
from .transfer import PROTOCOLS, run_transfer  # noqa: F401

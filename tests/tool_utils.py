"""Import a command-line script of the repository (tools/, benchmarks/: not packages) as a
module, without touching sys.path."""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(rel_path: str, name: str = ""):
    """The module of the script at ``REPO/rel_path`` (e.g. ``"tools/train_net.py"``), registered
    in ``sys.modules`` under ``name`` (default: ``ssprl_tool_<file stem>``)."""
    name = name or "ssprl_tool_" + os.path.splitext(os.path.basename(rel_path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, rel_path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

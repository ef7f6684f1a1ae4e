"""The package's layers point down and its imports have no cycle (read with ``ast`` by
tests/import_graph.py): config <- checkpoint, ops <- data, modeling, solver, evaluation <-
engine, visualization <- pipeline. Function-local imports are only for optional or heavy
dependencies, each with a comment saying so."""
import os

import pytest

from import_graph import (
    LAYERS,
    LOCAL_IMPORT_OK,
    PACKAGE,
    REPO,
    all_imports,
    find_cycle,
    layer_violation,
    module_graph,
    project_edges,
    subpackage,
    subpackage_graph,
)


def test_every_subpackage_has_a_layer():
    folders = {
        name for name in os.listdir(os.path.join(REPO, PACKAGE))
        if os.path.isfile(os.path.join(REPO, PACKAGE, name, "__init__.py"))
    }
    assert folders <= set(LAYERS), sorted(folders - set(LAYERS))


def test_no_import_points_up_or_sideways():
    bad = sorted(
        f"{imp.source}:{imp.line} imports {target}: {why}"
        for imp, target in project_edges(all_imports())
        if (why := layer_violation(imp.source, target))
    )
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    assert find_cycle(module_graph(all_imports())) is None
    assert find_cycle(subpackage_graph(all_imports())) is None


def test_function_local_imports_are_optional_dependencies_with_a_reason():
    bad = sorted(
        f"{imp.source}:{imp.line} {imp.target}"
        for imp in all_imports()
        if imp.local and (not imp.target.startswith(LOCAL_IMPORT_OK) or not imp.commented)
    )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "source, target, ok",
    [
        ("ssprl_d2.engine.jobs", "ssprl_d2.data.build", True),
        ("ssprl_d2.data.build", "ssprl_d2.config.tasks", True),
        ("ssprl_d2.data.multilabel", "ssprl_d2.modeling.classifier", False),  # sideways
        ("ssprl_d2.solver.build", "ssprl_d2.engine.setup", False),  # upward
        ("ssprl_d2.data.build", "ssprl_d2.data.photometric", True),  # inside one sub-package
        ("ssprl_d2", "ssprl_d2.modeling", True),  # the package root registers everything
    ],
)
def test_layer_rule(source, target, ok):
    assert (layer_violation(source, target) is None) == ok
    assert subpackage(source) in (None, *LAYERS)


def test_cycle_finder():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None

"""The server side travels as a bundle of tasks/remote/ sources (tasks/agent.py: BUNDLE for the agent,
HELPER_BUNDLE for the root-owned sudo helper). A module an op imports but the bundle lacks would
fail only on a server, at the first call of that op: here, each op's module is imported from a
loader fed with only the listed sources, as the server's bootstrap does."""

import ast
import json
import subprocess
import sys

import pytest

from tasks import agent
from tasks.remote import protocol

# What each bundle must serve: every op of the agent; the helper's gate and the one op it runs.
ROOTS = {
    "BUNDLE": (agent.BUNDLE, ["protocol"] + sorted({module for module, _ in protocol.OPS.values()})),
    "HELPER_BUNDLE": (
        agent.HELPER_BUNDLE,
        ["protocol", "helper"] + sorted({m for m, _ in protocol.HELPER_OPS.values()}),
    ),
}

# The bootstrap's own loader, then an import of each module named on the command line, and a
# look-up of each op's function in it.
IMPORT_ALL = (
    agent._LOADER
    + """\
import importlib
sys.meta_path.insert(0, Bundle(json.loads(sys.stdin.read())))
ops = json.loads(sys.argv[1])
for name in sys.argv[2:]:
    module = importlib.import_module("cutover." + name)
    for function in ops.get(name, []):
        getattr(module, function)
print("imported", *sys.argv[2:])
"""
)


def relative_imports(name):
    """The package modules tasks/remote/<name>.py imports, at its top or inside a function."""
    tree = ast.parse((agent.REMOTE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return found


def needed(roots):
    """roots and every package module they import, directly or not."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += relative_imports(name)
    return seen


@pytest.mark.parametrize("bundle", sorted(ROOTS))
def test_every_module_an_op_imports_travels_in_the_bundle(bundle):
    names, roots = ROOTS[bundle]
    missing = sorted(needed(roots) - set(names))
    assert missing == [], f"{bundle} lacks {missing}, which its ops import (tasks/agent.py)"
    ops = {}
    for module, function in [*protocol.OPS.values(), *protocol.HELPER_OPS.values()]:
        if module in roots:
            ops.setdefault(module, []).append(function)
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_ALL, json.dumps(ops), *roots],
        input=json.dumps(agent.sources(names)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, f"{bundle}: {run.stderr[-2000:]}"
    assert run.stdout == "imported " + " ".join(roots) + "\n"


def test_the_helper_program_holds_exactly_the_helper_bundle():
    program = agent.helper_program()
    for name in agent.HELPER_BUNDLE:
        assert repr(name) + ": " + repr((agent.REMOTE / f"{name}.py").read_text()) in program
    assert "'stage': " not in program and "'backup': " not in program  # root runs no more than the swap needs

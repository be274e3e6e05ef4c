"""The layering written in harness/__init__.py, checked on every import of every module (also the
imports inside functions), by parsing the source: nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods", "tasks")

# Layers, bottom up, with their rank: a module may import from layers of its own rank or below.
RANK = {"kernel": 0, "tasks": 1, "data": 2, "reporting": 2, "contract": 3, "methods": 4, "drive": 5, "cli": 6}
# Layers that may not import the reporting side even though it ranks below them.
NO_REPORTING = {"contract", "methods"}
HARNESS_LAYERS = {
    "kernel": {"__init__", "errors", "registry"},
    "data": {"steps", "replay", "metrics", "checkpoint", "streams", "config", "provenance"},
    "reporting": {"reporting", "plots", "lifecycle"},
    "drive": {"runner", "evaluation", "collect", "pipeline", "compare", "references", "pretraining", "launch", "sweep",
              "archive", "registry_models", "doctor"},
}
EXTERNAL_LAYERS = {"mlflow": "reporting"}   # third-party packages that belong to a layer

# (file, imported module) pairs that break the rule today, each with why it is not fixed yet. A pair
# that no longer occurs fails test_known_exceptions_are_still_real: delete it from here.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def layer_of(relpath: str) -> str | None:
    """The layer of a repository file (``harness/replay.py``), None for a harness module not mapped."""
    parts = Path(relpath).with_suffix("").parts
    if parts == ("cli",):
        return "cli"
    if parts[0] == "tasks":
        return "tasks"
    if parts[0] == "methods":
        return "contract" if parts[1:] == ("base",) else "methods"
    if parts[0] == "harness":
        name = parts[1] if len(parts) > 1 else "__init__"
        if name.startswith("offline"):      # harness/offline.py and whatever it is split into
            return "data"
        return next((layer for layer, names in HARNESS_LAYERS.items() if name in names), None)
    return None


def module_file(module: str) -> str | None:
    """``harness.replay`` -> ``harness/replay.py`` (or the package's ``__init__.py``), None if absent."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(ROOT).as_posix()
    return None


def imported_modules(node: ast.AST, relpath: str) -> list[str]:
    """The modules an import statement loads: ``from harness import metrics`` -> harness.metrics."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:                           # relative: resolve against the importing file's package
        package = Path(relpath).parent.parts[: len(Path(relpath).parent.parts) - node.level + 1]
        base = ".".join([*package, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    modules = [f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}")]
    return modules or [base]


def target_layer(module: str) -> str | None:
    top = module.split(".")[0]
    if top in EXTERNAL_LAYERS:
        return EXTERNAL_LAYERS[top]
    if top not in PACKAGES:
        return None                          # stdlib and other third-party packages: not layered
    path = module_file(module) or module_file(module.rsplit(".", 1)[0])
    return layer_of(path) if path else None


def violations(source: str, relpath: str) -> list[str]:
    """Every import in ``source`` (the file ``relpath``) that the layering forbids."""
    layer = layer_of(relpath)
    if layer is None:
        return [f"{relpath}: not in the layer map (add it to harness/__init__.py and tests/test_layering.py)"]
    found = []
    for node in ast.walk(ast.parse(source, relpath)):
        for module in imported_modules(node, relpath):
            target = target_layer(module)
            if target is None:
                continue
            if RANK[target] > RANK[layer] or (layer in NO_REPORTING and target == "reporting"):
                found.append(f"{relpath}:{node.lineno}: {layer} imports {module} ({target})")
    return found


def source_files() -> list[str]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")] + [ROOT / "cli.py"]
    return sorted(p.relative_to(ROOT).as_posix() for p in files)


def all_violations() -> list[str]:
    return [v for path in source_files() for v in violations((ROOT / path).read_text(), path)]


def is_known(violation: str) -> bool:
    path, rest = violation.split(":", 1)
    module = rest.split(" imports ", 1)[-1].split(" (", 1)[0]
    return (path, module) in KNOWN_EXCEPTIONS


def test_every_import_follows_the_layering():
    broken = [v for v in all_violations() if not is_known(v)]
    assert not broken, "imports that break the layering in harness/__init__.py:\n" + "\n".join(broken)


def test_known_exceptions_are_still_real():
    seen = {(v.split(":", 1)[0], v.split(" imports ", 1)[-1].split(" (", 1)[0]) for v in all_violations()}
    assert set(KNOWN_EXCEPTIONS) <= seen, f"fixed, remove from KNOWN_EXCEPTIONS: {set(KNOWN_EXCEPTIONS) - seen}"


@pytest.mark.parametrize("relpath, source, expected", [
    ("harness/replay.py", "from methods.base import Step\n",
     ["harness/replay.py:1: data imports methods.base (contract)"]),
    ("methods/dreamer.py", "def f():\n    from harness.runner import run_stream\n",
     ["methods/dreamer.py:2: methods imports harness.runner (drive)"]),
    ("methods/drqv2.py", "def f():\n    import mlflow\n", ["methods/drqv2.py:2: methods imports mlflow (reporting)"]),
    ("methods/gsa/bc.py", "from harness import reporting, replay\n",
     ["methods/gsa/bc.py:1: methods imports harness.reporting (reporting)"]),
    ("tasks/dmc.py", "from harness.offline import open_dataset\n",
     ["tasks/dmc.py:1: tasks imports harness.offline (data)"]),
    ("harness/runner.py", "from methods import METHODS\nfrom harness.reporting import flatten\n", []),
    ("methods/base.py", "from harness.steps import Step\nimport numpy\n", []),
    ("harness/new_thing.py", "", ["harness/new_thing.py: not in the layer map (add it to harness/__init__.py "
                                  "and tests/test_layering.py)"]),
])
def test_the_checker_sees_lazy_and_package_imports(relpath, source, expected):
    assert violations(source, relpath) == expected


def test_step_lives_in_the_data_layer_and_the_contract_reexports_it():
    from harness.replay import EpisodeReplay  # noqa: F401  (imports without methods/)
    from harness.steps import Step
    from methods.base import Step as ContractStep
    assert ContractStep is Step

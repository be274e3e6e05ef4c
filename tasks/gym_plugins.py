"""Gymnasium's plugin entry points, loaded when gymnasium is imported.

Packages declare their environments in the entry-point group ``gymnasium.envs`` (this project:
``gsa = "tasks.gym:register_envs"`` in pyproject.toml). Gymnasium up to 0.29 called every such entry point
when it was imported; Gymnasium 1.x (which Meta-World 3 requires) no longer does. :func:`install` puts that
behaviour back: it waits for ``gymnasium`` to be imported (a finder on ``sys.meta_path`` that wraps the
module's loader; nothing is imported before) and then calls each entry point of the group, so after
``./setup.sh`` a plain ``import gymnasium`` then ``gymnasium.make("gsa/quadruped-stand-v0")`` works.

``./setup.sh`` installs it with a one-line ``.pth`` file in the venv's site-packages (``PTH_LINE``). A
failing plugin is a warning, never an error of ``import gymnasium``.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from typing import Any

GROUP = "gymnasium.envs"
PTH_FILE = "gsa_harness_gymnasium_plugins.pth"
PTH_LINE = "import tasks.gym_plugins; tasks.gym_plugins.install()\n"


def load_plugins() -> list[str]:
    """Call every entry point of Gymnasium's plugin group; returns their names. Errors become warnings."""
    from importlib.metadata import entry_points
    loaded = []
    for ep in entry_points(group=GROUP):
        module = sys.modules.get(ep.module)
        if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False):
            continue   # the plugin's module is importing gymnasium itself: it registers when it finishes
        try:
            fn = ep.load()
            if callable(fn):
                fn()
            loaded.append(ep.name)
        except Exception as exc:   # a broken plugin must not break `import gymnasium`
            warnings.warn(f"gymnasium plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)
    return loaded


class _AfterGymnasium(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it lets the other finders find ``gymnasium`` and runs the plugins after the
    module has executed (then removes itself)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "gymnasium":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_load_plugins(module: Any) -> None:
            exec_module(module)
            load_plugins()

        spec.loader.exec_module = exec_then_load_plugins   # this spec's own loader instance only
        return spec


def install() -> None:
    """Load the plugins now if gymnasium is already imported, else right after it is."""
    if "gymnasium" in sys.modules:
        load_plugins()
    elif not any(isinstance(f, _AfterGymnasium) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterGymnasium())


def pth_installed() -> bool:
    """Whether the ``.pth`` line of ``./setup.sh`` is in this interpreter's site-packages."""
    import site
    from pathlib import Path
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return any((Path(d) / PTH_FILE).is_file() for d in dirs)

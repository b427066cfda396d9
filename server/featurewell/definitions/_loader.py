"""Load a feature repo: a Python module (or file) whose top-level definitions form a registry."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from featurewell.definitions._access import DefaultAccess, Team
from featurewell.definitions._entity import Entity
from featurewell.definitions._on_demand import OnDemandTransform
from featurewell.definitions._registry import Definition, Registry
from featurewell.definitions._view import FeatureView
from featurewell.errors import DefinitionError


def load_repo(target: str) -> Registry:
    """Load the feature repo at `target`: a `.py` file, a folder holding `repo.py`, or a module
    path such as `examples.streaming_media.repo`. Every Entity, FeatureView, on-demand
    transform, Team and DefaultAccess at the module's top level is registered."""
    module = _import(target)
    definitions: list[Definition] = [
        value
        for value in vars(module).values()
        if isinstance(value, Entity | FeatureView | OnDemandTransform | Team | DefaultAccess)
    ]
    if not any(isinstance(d, FeatureView) for d in definitions):
        raise DefinitionError(f"feature repo {target!r} defines no FeatureView")
    root = Path(module.__file__).resolve().parent if module.__file__ else None
    return Registry.build(definitions, root=root)


def _import(target: str) -> ModuleType:
    path = Path(target)
    if path.is_dir():
        path = path / "repo.py"
    if path.suffix == ".py":
        if not path.is_file():
            raise DefinitionError(f"feature repo file {str(path)!r} does not exist")
        name = f"featurewell_repo_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise DefinitionError(f"cannot import feature repo {str(path)!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        _execute(target, lambda: spec.loader.exec_module(module))  # type: ignore[union-attr]
        return module
    holder: list[ModuleType] = []
    loaded = sys.modules.get(target)
    if loaded is not None:  # a reload: run the module's current code again
        _execute(target, lambda: holder.append(importlib.reload(loaded)))
    else:
        _execute(target, lambda: holder.append(importlib.import_module(target)))
    return holder[0]


def repo_fingerprint(target: str) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of every .py file in the repo's folder: changes when the repo does."""
    path = Path(target)
    if path.suffix == ".py":
        folder = path.resolve().parent
    elif path.is_dir():
        folder = path.resolve()
    else:
        spec = importlib.util.find_spec(target)
        if spec is None or spec.origin is None:
            return ()
        folder = Path(spec.origin).resolve().parent
    files = sorted(folder.rglob("*.py"))
    out = []
    for file in files:
        try:
            stat = file.stat()
        except FileNotFoundError:  # replaced while we looked (ConfigMaps swap a symlink)
            continue
        out.append((str(file), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def _execute(target: str, run: Callable[[], object]) -> None:
    try:
        run()
    except DefinitionError as exc:
        raise DefinitionError(f"feature repo {target!r}: {exc}") from exc
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):
            raise DefinitionError(
                f"feature repo {target!r} not found: pass a .py file, a folder with repo.py, "
                "or an importable module path"
            ) from exc
        raise

"""The public surface, pinned: what `featurewell.client`, `featurewell.definitions`,
`featurewell.offline` and the wire-format module `featurewell.v1.columns` export. Adding, removing
or renaming a public name must change this file too, on purpose."""

from __future__ import annotations

import importlib
import inspect

import pytest

PUBLIC = {
    "featurewell.client": [
        "AsyncFeatureClient",
        "ClientOptions",
        "Column",
        "DeadlineExceeded",
        "DeprecatedFeatureWarning",
        "Fallback",
        "FallbackReason",
        "FeatureClient",
        "FeatureClientError",
        "FeatureResult",
        "InvalidArgument",
        "InvalidValues",
        "NearCache",
        "NotFound",
        "PermissionDenied",
        "ResourceExhausted",
        "ServerError",
        "Status",
        "Unauthenticated",
        "Unavailable",
        "ValueType",
        "ViewStatus",
        "WriteResult",
    ],
    "featurewell.definitions": [
        "Access",
        "Aggregation",
        "Bool",
        "Count",
        "DecayedSum",
        "DefaultAccess",
        "Deprecated",
        "Embedding",
        "Entity",
        "EventSource",
        "Feature",
        "FeatureRef",
        "FeatureType",
        "FeatureView",
        "Float32",
        "Float64",
        "Int64",
        "Kind",
        "Last",
        "ListOf",
        "Max",
        "Mean",
        "Min",
        "Mode",
        "OnDemandTransform",
        "ParquetSource",
        "Registry",
        "Stats",
        "String",
        "Sum",
        "Team",
        "load_repo",
        "on_demand",
        "parse_view_ref",
        "repo_fingerprint",
    ],
    "featurewell.offline": [
        "OfflineStore",
        "STATUS_SUFFIX",
        "get_historical_features",
    ],
    "featurewell.v1.columns": [
        "ColumnFormatError",
        "ELEMENT_DTYPES",
        "LIST_TYPES",
        "fill_column",
        "fixed_values",
        "list_values",
        "string_values",
    ],
}
# The packages whose __init__ only gathers the public names from private modules.
PACKAGES = ["featurewell.client", "featurewell.definitions", "featurewell.offline"]


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_all_is_pinned(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert len(set(exported)) == len(exported), "a name is listed twice in __all__"
    assert sorted(exported) == PUBLIC[name]
    assert not [n for n in exported if n.startswith("_")], "a private name is exported"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_exported_name_imports(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)  # what a star import really gives
    assert sorted(n for n in namespace if n != "__builtins__") == PUBLIC[name]
    for exported in PUBLIC[name]:
        assert getattr(importlib.import_module(name), exported) is namespace[exported]


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_export_their_own_objects_only(name: str) -> None:
    """No public name outside __all__, and no class or function re-exported from another
    package (protobuf stubs, numpy, the server), so nothing leaks in by an import."""
    module = importlib.import_module(name)
    public = sorted(
        n
        for n, value in vars(module).items()
        if not n.startswith("_") and not inspect.ismodule(value)
    )
    assert public == PUBLIC[name]
    foreign = [
        f"{n} from {value.__module__}"
        for n, value in vars(module).items()
        if n in PUBLIC[name]
        and (inspect.isclass(value) or inspect.isroutine(value))
        and not value.__module__.startswith(f"{name}.")
    ]
    assert foreign == []

"""Feature definitions: what is accepted, and clear errors for what is not."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurewell.definitions import (
    Bool,
    Embedding,
    Entity,
    Feature,
    FeatureView,
    Float32,
    Int64,
    ListOf,
    Registry,
    Stats,
    String,
    load_repo,
    on_demand,
)
from featurewell.errors import DefinitionError, TransformFailed
from tests import defs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "streaming_media"
user = Entity("user", join_keys={"user_id": String})


def view(name: str = "v", **kw: Any) -> FeatureView:
    kw.setdefault("features", [Feature("x", Int64)])
    return FeatureView(name, entity=kw.pop("entity", user), **kw)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Entity("User", {"user_id": String}), "entity name 'User' is invalid"),
        (lambda: Entity("user", {}), "needs join_keys"),
        (lambda: Entity("user", {"user_id": Float32}), "keys must be Int64 or String"),
        (lambda: Entity.composite("pair", user), "needs at least two entities"),
        (lambda: Entity.composite("pair", user, user), "repeats join key 'user_id'"),
        (lambda: Feature("bad-name", Int64), "feature name 'bad-name' is invalid"),
        (lambda: Feature("x", int), "use Int64, Float32"),  # type: ignore[arg-type]  # on purpose
        (lambda: Feature("x", Int64, default="7"), "default of feature 'x' must be an int"),
        (lambda: Feature("x", Int64, default=True), "must be an int"),
        (lambda: Feature("x", Bool, default=1), "must be a bool"),
        (lambda: Feature("x", Float32, default="0.5"), "must be a number"),
        (lambda: Feature("x", String, default=3), "must be a str"),
        (lambda: Feature("x", Embedding(3), default=[1, 2]), "must have 3 numbers, got 2"),
        (lambda: Feature("x", ListOf(Int64), default=[1.5]), "must hold integers"),
        (
            lambda: Feature("x", String, expected=Stats(mean=1.0, std=1.0)),
            "a string feature takes categories, not mean/std",
        ),
        (
            lambda: Feature("x", Int64, expected=Stats(categories={"a": 1.0})),
            "categories are for string features",
        ),
        (lambda: Feature("x", Int64, expected=Stats(mean=1.0)), "give mean and std together"),
        (lambda: Feature("x", Int64, expected=Stats(min=2, max=1)), "min is above max"),
        (
            lambda: Feature("x", String, expected=Stats(categories={"a": 0.7, "b": 0.5})),
            "sum to at most 1",
        ),
        (lambda: Feature("x", Int64, expected=Stats(default_rate=2)), "default_rate must be"),
        (lambda: view(freshness_sla=timedelta(0)), "freshness_sla must be a positive"),
        (lambda: Embedding(0), "positive dimension"),
        (lambda: ListOf(String), "ListOf takes Int64 or Float64"),
        (lambda: view(version=0), "version must be 1 or more"),
        (lambda: view(features=[]), "has no features"),
        (lambda: view(features=[Feature("x", Int64), Feature("x", Int64)]), "feature 'x' twice"),
        (lambda: view(features=[Feature("user_id", Int64)]), "shadows a join key"),
        (lambda: view(max_age=timedelta(0)), "max_age must be a positive timedelta"),
        (lambda: view(retention=5), "retention must be a positive timedelta"),
    ],
)
def test_invalid_definitions(build: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_registry_rejects_inconsistent_definitions() -> None:
    with pytest.raises(DefinitionError, match=r"feature view 'v@v1' is defined twice"):
        Registry.build([view(), view()])
    other_user = Entity("account", join_keys={"user_id": Int64})
    with pytest.raises(
        DefinitionError, match="join key 'user_id' is string in one entity and int64"
    ):
        Registry.build([view(), view("w", entity=other_user)])
    with pytest.raises(DefinitionError, match="another entity named 'user'"):
        Registry.build([view(), view("w", entity=Entity("user", {"user_id": String}))])
    with pytest.raises(DefinitionError, match="names both a feature view and a transform"):
        Registry.build([view(), _transform(name="v")])
    with pytest.raises(
        DefinitionError, match="input 'a': feature view 'v@v1' has no feature 'nope'"
    ):
        Registry.build([view(), _transform(inputs={"a": "v:nope"})])
    with pytest.raises(DefinitionError, match="input 'a': no feature view 'w'"):
        Registry.build([view(), _transform(inputs={"a": "w:x"})])
    with pytest.raises(DefinitionError, match="context 'user_id' is a join key"):
        Registry.build([view(), _transform(context={"user_id": String})])


def _transform(
    name: str = "t", inputs: dict[str, str] | None = None, context: dict[str, Any] | None = None
) -> Any:
    @on_demand(
        name=name, inputs=inputs or {"a": "v:x"}, context=context, outputs=[Feature("y", Float32)]
    )
    def fn(x: Any) -> Any:
        return {"y": x["a"] * 2}

    return fn


def test_transform_declaration_errors() -> None:
    with pytest.raises(DefinitionError, match="must name one feature as 'view:feature'"):
        _transform(inputs={"a": "v:*"})
    with pytest.raises(DefinitionError, match="is both an input alias and a context field"):
        _transform(context={"a": Int64})
    with pytest.raises(DefinitionError, match="use Int64, Float64, Bool or String"):
        _transform(context={"c": Embedding(2)})


def test_transform_outputs_are_checked_at_run_time() -> None:
    @on_demand(inputs={"a": "v:x"}, outputs=[Feature("y", Float32)])
    def wrong_name(x: Any) -> Any:
        return {"z": x["a"]}

    @on_demand(inputs={"a": "v:x"}, outputs=[Feature("y", Float32)])
    def wrong_length(x: Any) -> Any:
        return {"y": np.zeros(3)}

    @on_demand(inputs={"a": "v:x"}, outputs=[Feature("y", Float32)])
    def raises(x: Any) -> Any:
        raise ZeroDivisionError("boom")

    columns = {"a": np.arange(5)}
    with pytest.raises(TransformFailed, match=r"returned outputs \['z'\]; declared \['y'\]"):
        wrong_name.apply(columns, 5)
    with pytest.raises(TransformFailed, match=r"has shape \(3,\); expected \(5,\)"):
        wrong_length.apply(columns, 5)
    with pytest.raises(TransformFailed, match="raises' raised ZeroDivisionError: boom"):
        raises.apply(columns, 5)


def test_transform_broadcasts_one_user_against_many_items() -> None:
    taste = np.array([[1, 2, 0, 0]], np.float32)
    vectors = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
    out = defs.affinity.apply({"taste": taste, "vec": vectors}, 3)
    assert out["affinity"].tolist() == [1.0, 2.0, 0.0]
    assert out["affinity"].dtype == np.float32


def test_example_repo_loads_by_folder_file_and_module() -> None:
    by_folder = load_repo(str(EXAMPLE))
    by_file = load_repo(str(EXAMPLE / "repo.py"))
    by_module = load_repo("examples.streaming_media.repo")
    for registry in (by_folder, by_file, by_module):
        assert registry.default_versions["user_genre_preferences"] == 2
        assert set(registry.transforms) == {"user_item_affinity", "recency", "timing"}
        assert registry.entities["user_item"].key_names == ("user_id", "item_id")
    assert by_folder.root == EXAMPLE


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="does not exist"):
        load_repo(str(tmp_path / "missing.py"))
    with pytest.raises(DefinitionError, match=r"not found: pass a \.py file"):
        load_repo("no_such_module_anywhere")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(DefinitionError, match="defines no FeatureView"):
        load_repo(str(empty))
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from featurewell.definitions import Entity, String\n"
        "user = Entity('User', {'user_id': String})\n"
    )
    with pytest.raises(DefinitionError, match=r"broken\.py.*entity name 'User' is invalid"):
        load_repo(str(broken))

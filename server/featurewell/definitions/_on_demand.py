"""On-demand transforms: vectorised functions over feature columns and request context.

The same function runs at request time in the server and offline over training frames, so a
transform cannot drift between the two. It receives whole numpy columns (never one row at a time):
a column of length 1 (a user's feature in a 1-user + 500-item call) broadcasts against length-N
columns by ordinary numpy broadcasting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.definitions._names import check_name
from featurewell.definitions._types import CONTEXT_TYPES, FeatureType, Kind
from featurewell.definitions._view import Feature
from featurewell.errors import DefinitionError, TransformFailed

Columns = Mapping[str, npt.NDArray[Any]]
TransformFn = Callable[[Columns], Mapping[str, Any]]


@dataclass(frozen=True, eq=False)
class OnDemandTransform:
    """A request-time feature computed from stored features (`inputs`: alias -> feature
    reference) and request fields (`context`: name -> type)."""

    name: str
    inputs: Mapping[str, str]
    context: Mapping[str, FeatureType]
    outputs: Sequence[Feature]
    fn: TransformFn
    description: str = ""
    output_index: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        check_name(self.name, "on-demand transform")
        where = f"on-demand transform {self.name!r}"
        if not callable(self.fn):
            raise DefinitionError(f"{where}: fn is not callable")
        for alias, ref in self.inputs.items():
            check_name(alias, f"{where} input alias")
            if not isinstance(ref, str) or ":" not in ref or ref.endswith(":*"):
                raise DefinitionError(
                    f"{where}: input {alias!r} must name one feature as 'view:feature', got {ref!r}"
                )
        for key, key_type in self.context.items():
            check_name(key, f"{where} context field")
            if key in self.inputs:
                raise DefinitionError(
                    f"{where}: {key!r} is both an input alias and a context field"
                )
            if key_type not in CONTEXT_TYPES:
                raise DefinitionError(
                    f"{where}: context {key!r} has type {key_type}; "
                    "use Int64, Float64, Bool or String"
                )
        if not self.inputs and not self.context:
            raise DefinitionError(f"{where} has no inputs and no context")
        outputs = tuple(self.outputs)
        if not outputs:
            raise DefinitionError(f"{where} declares no outputs")
        index: dict[str, int] = {}
        for position, output in enumerate(outputs):
            if output.name in index:
                raise DefinitionError(f"{where} declares output {output.name!r} twice")
            if output.dtype.is_list:
                raise DefinitionError(f"{where}: list outputs are not supported ({output.name!r})")
            index[output.name] = position
        object.__setattr__(self, "inputs", dict(self.inputs))
        object.__setattr__(self, "context", dict(self.context))
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "output_index", index)

    def apply(self, columns: Columns, rows: int) -> dict[str, npt.NDArray[Any]]:
        """Run the transform over `columns` (by alias and context name; each of length 1 or
        `rows`) and return each output as an array of length 1 or `rows`, cast to its type."""
        try:
            produced = self.fn(columns)
        except Exception as exc:  # the user's code: report it as the transform's failure
            raise TransformFailed(
                f"on-demand transform {self.name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(produced, Mapping):
            raise TransformFailed(
                f"on-demand transform {self.name!r} must return a dict of output name -> array, "
                f"got {type(produced).__name__}"
            )
        missing = [o.name for o in self.outputs if o.name not in produced]
        extra = sorted(set(produced) - set(self.output_index))
        if missing or extra:
            raise TransformFailed(
                f"on-demand transform {self.name!r} returned outputs {sorted(produced)}; "
                f"declared {list(self.output_index)}"
            )
        return {o.name: _conform(self.name, o, produced[o.name], rows) for o in self.outputs}

    def apply_offline(self, frame: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
        """The same computation over a training frame whose columns are named by feature
        reference ('view:feature') and context field, exactly as the server names them."""
        columns: dict[str, npt.NDArray[Any]] = {}
        for alias, ref in self.inputs.items():
            if ref not in frame:
                raise DefinitionError(f"{self.name!r} needs column {ref!r} in the frame")
            columns[alias] = _stack(frame[ref])
        for key in self.context:
            if key not in frame:
                raise DefinitionError(f"{self.name!r} needs context column {key!r} in the frame")
            columns[key] = np.asarray(frame[key])
        rows = max(len(c) for c in columns.values())
        return self.apply(columns, rows)


def _stack(values: Any) -> npt.NDArray[Any]:
    """A frame column of per-row vectors (pandas object column, list of arrays) as a 2-D array."""
    array = np.asarray(values)
    if array.dtype == object and len(array) and isinstance(array[0], list | np.ndarray):
        return np.stack([np.asarray(v) for v in array])
    return array


def _conform(name: str, output: Feature, value: Any, rows: int) -> npt.NDArray[Any]:
    dtype = output.dtype
    array = np.asarray(value)
    if array.ndim == 0:
        array = array.reshape(1)
    expected_tail: tuple[int, ...] = (dtype.dim,) if dtype.kind is Kind.EMBEDDING else ()
    if array.shape[1:] != expected_tail or array.shape[0] not in (1, rows):
        raise TransformFailed(
            f"on-demand transform {name!r} output {output.name!r} has shape {array.shape}; "
            f"expected {(rows, *expected_tail)} or a broadcastable length of 1"
        )
    if dtype.kind is Kind.STRING:
        return array.astype(str).astype(object)
    try:
        return array.astype(
            dtype.element_dtype, casting="same_kind" if array.dtype != bool else "unsafe"
        )
    except TypeError as exc:
        raise TransformFailed(
            f"on-demand transform {name!r} output {output.name!r} is {array.dtype}, "
            f"not castable to {dtype}"
        ) from exc


def on_demand(
    *,
    inputs: Mapping[str, str],
    outputs: Sequence[Feature],
    context: Mapping[str, FeatureType] | None = None,
    name: str | None = None,
    description: str = "",
) -> Callable[[TransformFn], OnDemandTransform]:
    """Declare an on-demand transform from a vectorised function::

    @on_demand(inputs={"pref": "user_genres:vector", "item": "item_genre:vector"},
               outputs=[Feature("genre_affinity", Float32)])
    def user_item_affinity(x):
        return {"genre_affinity": (x["pref"] * x["item"]).sum(axis=1)}
    """

    def wrap(fn: TransformFn) -> OnDemandTransform:
        return OnDemandTransform(
            name=name or str(getattr(fn, "__name__", "")),
            inputs=inputs,
            context=context or {},
            outputs=outputs,
            fn=fn,
            description=description or (fn.__doc__ or "").strip(),
        )

    return wrap

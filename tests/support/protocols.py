"""A real check that an object implements a `typing.Protocol`: `isinstance` against a runtime-checkable protocol
only looks for attribute names, so a method with a renamed, reordered or missing parameter, another default, or
other types would pass it."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable


def protocol_mismatches(implementation: object, protocol: type) -> list[str]:
    """How `implementation` departs from `protocol` (empty: it does not): each public member the protocol
    declares must exist; a property's value must be of its declared type; a method must take the same parameters
    (names, kinds, defaults, in order) with the same resolved annotations, and return the same type."""
    found: list[str] = []
    for member, declared in vars(protocol).items():
        if member.startswith("_"):
            continue
        if not hasattr(implementation, member):
            found.append(f"{member}: missing")
        elif isinstance(declared, property):
            assert declared.fget is not None
            wanted = typing.get_type_hints(declared.fget)["return"]
            value = getattr(implementation, member)
            if not isinstance(value, typing.get_origin(wanted) or wanted):
                found.append(f"{member}: {type(value).__name__}, the protocol declares {wanted}")
        elif inspect.isfunction(declared):
            found += [f"{member}: {m}" for m in _method_mismatches(getattr(implementation, member), declared)]
    return found


def _method_mismatches(method: object, declared: Callable[..., object]) -> list[str]:
    if not callable(method):
        return ["not a method"]
    function = method.__func__ if inspect.ismethod(method) else method
    wanted = list(inspect.signature(declared).parameters.values())[1:]  # without `self`
    actual = list(inspect.signature(method).parameters.values())  # bound: `self` is already gone
    shape = [(p.name, p.kind, p.default) for p in wanted]
    if [(p.name, p.kind, p.default) for p in actual] != shape:
        return [f"parameters {inspect.signature(method)}, the protocol declares {inspect.signature(declared)}"]
    wanted_types = typing.get_type_hints(declared)
    actual_types = typing.get_type_hints(function)
    return [
        f"{name}: {actual_types.get(name)}, the protocol declares {wanted_types[name]}"
        for name in [p.name for p in wanted] + ["return"]
        if name in wanted_types and actual_types.get(name) != wanted_types[name]
    ]

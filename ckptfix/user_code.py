"""The user's own code named on the command line: ``package.module:function`` (``--model``, ``--arg-scope``,
``--preprocess``) and the modules defining a Keras file's custom classes (``--import``). Resolving it imports
the module, which runs its code; no TensorFlow is imported here."""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, Mapping, Sequence

from ckptfix.errors import CkptfixError


def resolve_function(spec: str | Callable, option: str = "--model", error: type[CkptfixError] = CkptfixError) -> Callable:
    """The callable ``spec`` names (``package.module:function``, or ``module:Class.method``), or ``spec`` itself
    when it is already callable. Failures raise ``error`` naming ``option`` and the fix."""
    if callable(spec):
        return spec
    module_name, _, attribute = str(spec).partition(":")
    if not module_name or not attribute:
        raise error(f"{option} {spec!r}: expected package.module:function.")
    try:
        target = importlib.import_module(module_name)
    except ImportError as failure:
        raise error(f"{option} {spec}: cannot import {module_name} ({failure}); is it on PYTHONPATH?") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise error(f"{option} {spec}: {module_name} has no {attribute}.")
    if not callable(target):
        raise error(f"{option} {spec}: {attribute} is not a function.")
    return target


def _module_objects(module) -> dict[str, object]:
    """The classes and functions a module offers as custom objects: those of its ``__all__``, else those it
    defines itself (public names), by name."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name, value in vars(module).items() if not name.startswith("_")
                 and (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == module.__name__]
    return {name: getattr(module, name) for name in names
            if inspect.isclass(getattr(module, name, None)) or inspect.isfunction(getattr(module, name, None))}


def import_custom_objects(specs: Mapping | str | Sequence | None, option: str = "--import") -> dict[str, object]:
    """Keras custom objects (name -> class or function) from ``specs``, in Keras' own terms.

    Each spec is a ``{name: object}`` dict (the API's ``custom_objects=``), ``package.module`` (imported: the
    classes and functions it defines or lists in ``__all__``, and whatever it registers with
    ``register_keras_serializable``, which Keras then finds itself) or ``package.module:NAME`` (a dict of
    custom objects, or one class / function). Later specs win on a repeated name."""
    if specs is None:
        return {}
    found: dict[str, object] = {}
    for spec in [specs] if isinstance(specs, (str, Mapping)) else specs:
        if isinstance(spec, Mapping):
            found.update(spec)
            continue
        module_name, _, attribute = str(spec).partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as failure:
            raise CkptfixError(f"{option} {spec}: cannot import {module_name} ({failure}); is it on PYTHONPATH?") from None
        if not attribute:
            found.update(_module_objects(module))
            continue
        value = getattr(module, attribute, None)
        if isinstance(value, Mapping):
            found.update(value)
        elif inspect.isclass(value) or inspect.isfunction(value):
            found[attribute] = value
        else:
            raise CkptfixError(f"{option} {spec}: {module_name}.{attribute} is not a dict of custom objects, a class "
                               "or a function.")
    return found

"""The user's own code named on the command line: ``package.module:function`` (``--model``, ``--arg-scope``,
``--preprocess``). Resolving it imports the module, which runs its code; no TensorFlow is imported here."""

from __future__ import annotations

import importlib
from typing import Callable

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

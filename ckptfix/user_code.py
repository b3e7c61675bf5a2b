"""The user's own code named on the command line: ``package.module:function`` (``--model``, ``--arg-scope``,
``--preprocess``) and the modules defining a Keras file's custom classes (``--import``). Resolving it imports
the module, which runs its code; no TensorFlow is imported here.

An exception raised inside the user's code is theirs: it becomes a :class:`UserCodeError` carrying their
traceback (the frames in their files only; TensorFlow's, ckptfix's and the standard library's left out), which
the CLI prints below one line naming the option. A spec that names no module, or a module that is not there,
is ckptfix's one-line error.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import sysconfig
import traceback
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from ckptfix.errors import CkptfixError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UserCodeError(CkptfixError):
    """An exception raised inside the user's code. ``str()``: one line naming the option and the exception;
    ``user_traceback``: their traceback, their files' frames only (what the CLI prints below that line); the
    original exception is the ``__cause__``."""

    def __init__(self, where: str, error: BaseException, user_traceback: str) -> None:
        super().__init__(f"{where}: your code raised {type(error).__name__} (its traceback below).")
        self.user_traceback = user_traceback


def describe(option: str, spec) -> str:
    """How a message names the user's code: ``--preprocess mod:fn``, or ``--preprocess (fn)`` for a callable."""
    return f"{option} {spec}" if isinstance(spec, str) else f"{option} ({getattr(spec, '__qualname__', spec)})"


def _library_folders() -> tuple[str, ...]:
    """Folders whose files are not the user's: ckptfix's, the standard library's and the installed packages'."""
    paths = sysconfig.get_paths()
    folders = {str(Path(__file__).resolve().parent)}
    folders.update(os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib")
                   if key in paths)
    return tuple(folder + os.sep for folder in folders)


def _is_users(filename: str, theirs: set[str]) -> bool:
    if os.path.realpath(filename) in theirs:
        return True
    if filename.startswith("<") or "__autograph_generated_file" in filename:
        return False
    return not os.path.realpath(filename).startswith(_library_folders())


#: a frame as TensorFlow's AutoGraph writes it into an error message ("in user code:")
_AUTOGRAPH_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)\s*\*?\s*$')


def _autograph_frames(message: str, theirs: set[str]) -> list[str] | None:
    """The user's frames from an AutoGraph message (a function traced by ``tf.data`` / ``tf.function``: the
    traceback holds generated files, the message the original ones), and its last line; None if not one."""
    lines = message.splitlines()
    if not lines or lines[0].strip() != "in user code:":
        return None
    kept = []
    for k, line in enumerate(lines):
        found = _AUTOGRAPH_FRAME.match(line)
        if found and _is_users(found.group(1), theirs):
            code = lines[k + 1].strip() if k + 1 < len(lines) else ""
            kept.append(f'  File "{found.group(1)}", line {found.group(2)}, in {found.group(3)}\n    {code}\n')
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return kept + [last + "\n"] if kept else None


def user_traceback(error: BaseException, theirs: Sequence[str] = ()) -> str | None:
    """``error``'s traceback through the user's files only (``theirs``: files that are theirs wherever they are
    installed); None when no frame of it is theirs (the exception did not come from their code)."""
    theirs = {os.path.realpath(path) for path in theirs if path}
    autograph = _autograph_frames(str(error), theirs)
    if autograph is not None:
        return "Traceback (most recent call last, your code only):\n" + "".join(autograph)
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if _is_users(frame.filename, theirs)]
    located = isinstance(error, SyntaxError) and error.filename and _is_users(error.filename, theirs)
    if not frames and not located:
        return None
    return ("Traceback (most recent call last, your code only):\n" + "".join(traceback.format_list(frames))
            + "".join(traceback.format_exception_only(type(error), error)))


def _files_of(function) -> list[str]:
    """The file defining ``function`` (and its module's), when Python can tell."""
    files = []
    with contextlib.suppress(TypeError, OSError):
        files.append(inspect.getsourcefile(function) or "")
    module = inspect.getmodule(function)
    files.append(getattr(module, "__file__", None) or "")
    return files


@contextlib.contextmanager
def running_user_code(where: str, function=None) -> Iterator[None]:
    """Around code that calls the user's ``function`` (``where`` names it: :func:`describe`): an exception whose
    traceback passes through the user's files becomes a :class:`UserCodeError`; any other is left as it is."""
    try:
        yield
    except CkptfixError:
        raise
    except Exception as error:
        shown = user_traceback(error, _files_of(function) if function is not None else ())
        if shown is None:
            raise
        raise UserCodeError(where, error, shown) from error


def _module_name(spec: str, module_name: str, option: str, error: type[CkptfixError], expected: str) -> None:
    """A one-line error when ``module_name`` is no dotted module name (``''``, ``./prints``, ``../x``)."""
    if not module_name:
        raise error(f"{option} {spec!r}: expected {expected}.")
    if not all(_IDENTIFIER.fullmatch(part) for part in module_name.split(".")):
        raise error(f"{option} {spec}: {module_name} is not a module name: put its folder on PYTHONPATH and name the "
                    f"module as Python imports it ({expected}).")


def _import(spec: str, module_name: str, option: str, error: type[CkptfixError]):
    """Import the user's module: an exception raised by its code shown as theirs (a module it imports that is
    missing included); the module itself not found, one line."""
    try:
        with running_user_code(f"{option} {spec}"):
            return importlib.import_module(module_name)
    except ImportError as failure:
        raise error(f"{option} {spec}: cannot import {module_name} ({failure}); is it on PYTHONPATH?") from None


def resolve_function(spec: str | Callable, option: str = "--model", error: type[CkptfixError] = CkptfixError) -> Callable:
    """The callable ``spec`` names (``package.module:function``, or ``module:Class.method``), or ``spec`` itself
    when it is already callable. Failures raise ``error`` naming ``option`` and the fix; an exception raised by
    the module's own code while it is imported is a :class:`UserCodeError`."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise error(f"{option} takes package.module:function or a callable, not {type(spec).__name__} ({spec!r}).")
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise error(f"{option} {spec!r}: expected package.module:function.")
    _module_name(spec, module_name, option, error, "package.module:function")
    target = _import(spec, module_name, option, error)
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
        if not isinstance(spec, str):
            raise CkptfixError(f"{option} takes package.module[:NAME] or a dict of custom objects, not "
                               f"{type(spec).__name__} ({spec!r}).")
        module_name, _, attribute = spec.partition(":")
        _module_name(spec, module_name, option, CkptfixError, "package.module or package.module:NAME")
        module = _import(spec, module_name, option, CkptfixError)
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

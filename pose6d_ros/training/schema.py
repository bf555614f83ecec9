"""Typed recipe sections: a nested mapping (YAML, ``--set``) checked against a dataclass, once.

:func:`build_section` turns a mapping into a (frozen) dataclass instance, field by field, from the
field annotations:

- a key the dataclass does not have is an error naming the key and its nearest valid name
  (``recipe key 'optim.max_step' is unknown; did you mean 'optim.max_steps'?``);
- a value of the wrong type is an error naming the key: an int is accepted for a float, a bool is not
  accepted for an int or a float, a list or tuple for a tuple field, ``None`` only where the field is
  ``Optional``, one of the listed values for a ``Literal``;
- a nested dataclass field takes a nested mapping, applied over the field's default (a partial
  section keeps the defaults of the keys it does not give, as the old recursive dict merge did);
- an error raised by a dataclass's own ``__post_init__`` (a cross-key rule) is re-raised naming the
  section.

Every error is a :class:`RecipeError`: one line, which the console scripts print as ``prog: error: ...``
with exit code 2 (``_checks.run_cli``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
from typing import (Any, Dict, Literal, Mapping, Optional, Sequence, Type, TypeVar, Union, get_args, get_origin,
                    get_type_hints)

from pose6d_ros._checks import InputError, one_line

__all__ = ["RecipeError", "build_section", "to_plain", "unknown_key"]

T = TypeVar("T")

# PyYAML follows YAML 1.1, which reads ``1e-4`` (no dot) as a string: such a string is a float here
_FLOAT_TEXT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


class RecipeError(InputError):
    """A recipe key that is unknown, of the wrong type, out of range or missing; one line naming it."""


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return f"a list ({value!r})" if len(repr(value)) <= 60 else "a list"
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def unknown_key(key: str, prefix: str, valid: Sequence[str]) -> RecipeError:
    """The error for an unknown ``key`` among the ``valid`` names of section ``prefix``."""
    name = key.rsplit(".", 1)[-1] if prefix else key
    close = difflib.get_close_matches(name, list(valid), n=1)
    if close:
        return RecipeError(f"recipe key '{key}' is unknown; did you mean '{_join(prefix, close[0])}'?")
    where = f"'{prefix}'" if prefix else "a recipe"
    return RecipeError(f"recipe key '{key}' is unknown; the keys of {where} are: {', '.join(valid)}")


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).replace('an ', '').replace('a ', '')}s"
        return f"a list of {len(args)} values"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a section (a mapping)"
    if _is_union(origin):
        return " or ".join([_describe(a) for a in args if a is not type(None)]
                           + (["null"] if type(None) in args else []))
    return getattr(tp, "__name__", str(tp))


def _is_union(origin: Any) -> bool:
    return origin is Union or origin is getattr(types, "UnionType", Union)  # Optional[X] and X | None


def _check(tp: Any, value: Any, key: str, default: Any = None) -> Any:
    """``value`` checked (and normalised: tuples, floats, ``os.PathLike`` -> str) against ``tp``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if _is_union(origin):
        options = [a for a in args if a is not type(None)]
        if value is None:
            if len(options) < len(args):
                return None
            raise RecipeError(f"recipe key '{key}' must be {_describe(tp)}, got null")
        if len(options) == 1:
            try:
                return _check(options[0], value, key, default)
            except RecipeError as e:
                if not str(e).startswith(f"recipe key '{key}' must be "):  # an error inside a section or a list
                    raise
                raise RecipeError(f"recipe key '{key}' must be {_describe(tp)}, got {_show(value)}") from None
        for option in options:
            try:
                return _check(option, value, key, default)
            except RecipeError:
                continue
        raise RecipeError(f"recipe key '{key}' must be {_describe(tp)}, got {_show(value)}")
    if value is None:
        raise RecipeError(f"recipe key '{key}' must be {_describe(tp)}, got null (it has no 'unset' value)")
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, key, default if isinstance(default, tp) else None)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"recipe key '{key}' must be {_describe(tp)}, got {_show(value)}{hint}")
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        ok = isinstance(value, str)
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_check(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise RecipeError(f"recipe key '{key}' must be a list of {len(args)} values, got {_show(value)}")
            return tuple(_check(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    elif origin in (dict, Mapping) or tp in (dict, Mapping):
        if isinstance(value, Mapping):
            kt, vt = args if args else (Any, Any)
            return {_check(kt, k, f"{key} (a key)"): _check(vt, v, _join(key, k)) for k, v in value.items()}
    else:  # a type this module does not know: a bug in a section's annotations, not in the recipe
        raise TypeError(f"recipe key '{key}': unsupported annotation {tp!r}")
    if not ok:
        raise RecipeError(f"recipe key '{key}' must be {_describe(tp)}, got {_show(value)}")
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def build_section(cls: Type[T], data: Any, prefix: str = "", base: Optional[T] = None) -> T:
    """``cls`` (a dataclass) from the mapping ``data`` (section ``prefix``; ``""`` for the top level),
    over ``base`` (default: the class defaults). An instance of ``cls`` is returned as it is.

    Raises:
        RecipeError: an unknown key, a value of the wrong type, or a rule of ``cls.__post_init__``.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        what = f"recipe key '{prefix}'" if prefix else "a recipe"
        raise RecipeError(f"{what} must be a section (a mapping), got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = get_type_hints(cls)
    kw: Dict[str, Any] = {}
    for k, v in data.items():
        key = _join(prefix, k)
        if k not in fields:
            raise unknown_key(key, prefix, list(fields))
        default = getattr(base, k) if base is not None else _default(fields[k])
        kw[k] = _check(hints[k], v, key, default)
    try:
        return dataclasses.replace(base, **kw) if base is not None else cls(**kw)  # type: ignore[type-var]
    except RecipeError:
        raise
    except (ValueError, TypeError) as e:  # a cross-key rule of __post_init__
        where = f"recipe section '{prefix}'" if prefix else "recipe"
        raise RecipeError(f"{where}: {one_line(e)}") from e


def to_plain(obj: Any) -> Any:
    """A dataclass (or anything inside one) as plain YAML/JSON data: dicts, lists, scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj

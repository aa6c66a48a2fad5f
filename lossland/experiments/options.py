"""One option system: the fields of a frozen dataclass are the options.

A study's settings are a frozen dataclass whose fields carry their help (and
choices) as metadata (:func:`option`); :func:`spec_of` turns its fields into
the :class:`Option` rows that ``lossland.scripts._cli.define_flags`` makes
into absl flags of the same names, so a field, its default, its help and its
flag are written once. A preset is a value of that dataclass
(:mod:`lossland.configs`); the flags a user gives replace its fields
(:func:`override`), and each dataclass validates itself in ``__post_init__``
with a one-line :class:`OptionError` naming the field (exit status 2 in a script).

The ensemble job's options (:data:`lossland.job.SPEC`) are rows of the same
:class:`Option`; a study passes the job options it does not own through to
every cell it runs (:func:`pass_through`).
"""
import dataclasses
import types
import typing
from typing import Any, NamedTuple

from lossland.io import InputError


class OptionError(InputError):
  """A bad option value (one line naming it; exit status 2 in a script)."""


class Option(NamedTuple):
  """One option (and command-line flag).

  Attributes:
    name: the option (and flag) name.
    type: "int", "float", "bool", "str", "enum", or a list of numbers:
      "ints", "floats" (comma-separated on the command line, tuples as values).
    default: default value (None: unset, e.g. ``N`` or ``margin``).
    help: one-line help.
    choices: the allowed values of an "enum".
    allow_inf: a "float" that may be +inf (its help says what inf means).
  """
  name: str
  type: str
  default: Any
  help: str
  choices: tuple = ()
  allow_inf: bool = False


def option(default, help: str, choices: tuple = (), flag: bool = True,
           allow_inf: bool = False):
  """A dataclass field that is an option: ``help`` (and ``choices``) document it
  and are the help of its flag; ``flag=False`` keeps it off the command line
  (a value only a preset or a caller sets, e.g. a dict); ``allow_inf`` lets a
  float option be +inf."""
  meta = {"help": help, "choices": choices, "flag": flag, "allow_inf": allow_inf}
  if isinstance(default, (dict, list)):
    return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


_SCALARS = {int: "int", float: "float", bool: "bool", str: "str"}


def _kind(tp, choices) -> str:
  """The :class:`Option` type of a field annotation (``X | None`` is X)."""
  if choices:
    return "enum"
  args = [a for a in typing.get_args(tp) if a is not type(None)]
  if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
    tp = args[0]
  if typing.get_origin(tp) is tuple:
    inner = typing.get_args(tp)[0]
    return {int: "ints", float: "floats"}[inner]
  return _SCALARS[tp]


def spec_of(cls) -> tuple:
  """The :class:`Option` rows of a dataclass's flag fields, in field order."""
  hints = typing.get_type_hints(cls)
  rows = []
  for f in dataclasses.fields(cls):
    if not f.metadata.get("flag", "help" in f.metadata):
      continue
    choices = tuple(f.metadata.get("choices", ()))
    rows.append(Option(f.name, _kind(hints[f.name], choices), f.default,
                       f.metadata["help"], choices, f.metadata.get("allow_inf", False)))
  return tuple(rows)


def parse_list(o: Option, value) -> tuple:
  """A list option's value as a tuple of numbers (from a tuple, a list of
  strings as absl gives it, or one comma-separated string).

  Raises:
    OptionError: an entry that is not a number of the option's kind.
  """
  if value is None:
    return None
  items = value.split(",") if isinstance(value, str) else list(value)
  conv = int if o.type == "ints" else float
  try:
    return tuple(conv(str(v).strip()) if isinstance(v, str) else conv(v) for v in items)
  except ValueError:
    kind = "integers" if o.type == "ints" else "numbers"
    raise OptionError(f"--{o.name} must be {kind}, got {','.join(map(str, items))}") from None


def _parsed(cls, given: dict) -> dict:
  spec = {o.name: o for o in spec_of(cls)}
  unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
  if unknown:
    raise OptionError(f"unknown option(s) of {cls.__name__}: {', '.join(unknown)}")
  return {k: parse_list(spec[k], v) if k in spec and spec[k].type in ("ints", "floats")
          else v for k, v in given.items()}


def build(cls, given: dict):
  """A ``cls`` from the fields in ``given`` (list options parsed into tuples;
  the others at their defaults); the dataclass's own checks run on it.

  Raises:
    OptionError: an unknown field or a bad value (one line, naming it).
  """
  return cls(**_parsed(cls, given))


def override(config, given: dict):
  """``config`` with the fields named in ``given`` replaced (list options
  parsed into tuples); the dataclass's own checks run on the result.

  Raises:
    OptionError: an unknown field or a bad value (one line, naming it).
  """
  return dataclasses.replace(config, **_parsed(type(config), given))


def pass_through(spec, owned) -> tuple:
  """The rows of ``spec`` (e.g. the ensemble job's) that a study does not own,
  each with default None ("the preset's, else the job's"), for flags that a
  study hands to every cell it runs."""
  owned = set(owned)
  return tuple(o._replace(default=None,
                          help=f"{o.help} (every cell; default: the preset's, else the job's)")
               for o in spec if o.name not in owned)


def check_fields(config, checks) -> None:
  """Raises a one-line :class:`OptionError` for the first ``(name, ok)`` of
  ``checks`` that is false, and for an enum field outside its choices."""
  for f in dataclasses.fields(config):
    choices = f.metadata.get("choices", ())
    value = getattr(config, f.name)
    if choices and value is not None and value not in choices:
      raise OptionError(f"--{f.name} must be one of {', '.join(map(str, choices))}, "
                       f"got {value!r}")
  for name, ok in checks:
    if not ok:
      raise OptionError(f"invalid --{name}: {getattr(config, name, None)!r}")

"""Command-line options shared by every avemo CLI (standard library only: no torch import).

Every long option is accepted in its underscore and its dashed spelling (``--data_root`` and
``--data-root``) and stored under one ``dest``:

    add_option(parser, "data_root", help="...")                   # --data_root, --data-root -> args.data_root
    add_option(parser, "contrastive_weight", "cl_loss_weight", type=float, default=0.1, help="...")
    add_option(parser, "tensorboard", action=argparse.BooleanOptionalAction, default=True)
                                                                   # also --no-tensorboard
    given(args)   # {dest: option string as typed} of the options that were on the command line
    raise UsageError("--gate_alpha only applies to ...")          # `avemo.cli` prints "avemo train: error: ..."

Configuration dataclasses describe their own options in field metadata (a plain dict, so config
modules need not import this one); a field is an option when its metadata has "help":

    help          help text (the field's default is appended: "(default: 0.3)", on/off for booleans)
    flag          option name when it differs from the field name (the dest stays the field name)
    aliases       more option names, e.g. ("cl_loss_weight",)
    choices       allowed values (import the tuple from the module that owns it)
    type          str -> value converter (default: the type of an int or float default)
    negate        the flag stores False (e.g. ``--no_progress`` for ``progress: bool = True``)
    group         help section title
    default_text  what the help shows as the default, "" for nothing
    hidden        no help line (the option still works)

    add_fields(parser, TrainConfig, exclude=("model", "losses"))  -> names of the fields added
    config_from_args(TrainConfig, args, out_dir="runs/x")         -> TrainConfig(options from args, overrides)

Booleans: default False -> a ``--flag``; default True -> ``--flag/--no-flag``; ``negate`` -> ``--flag``
that turns the field off.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable

_GIVEN = "_avemo_given"  # namespace attribute: {dest: option string}


class UsageError(Exception):
    """A command line that parses but cannot be honoured; the CLI reports it as an argparse error (exit 2)."""


def flag_strings(*names: str) -> list[str]:
    """["--a_b", "--a-b", ...] for each name, without repeats."""
    out = []
    for name in names:
        out += [f"--{name}", f"--{name.replace('_', '-')}"]
    return list(dict.fromkeys(out))


def given(args: argparse.Namespace) -> dict[str, str]:
    """{dest: option string as typed} for the options added here that the command line set."""
    return dict(getattr(args, _GIVEN, {}))


def _record(namespace: argparse.Namespace, dest: str, option_string: str | None) -> None:
    seen = dict(getattr(namespace, _GIVEN, {}))
    seen[dest] = option_string or dest
    setattr(namespace, _GIVEN, seen)


class _Store(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _record(namespace, self.dest, option_string)


class _Const(argparse.Action):
    """store_true / store_false that also records that it was given."""

    def __init__(self, option_strings, dest, const=True, default=None, required=False, help=None):
        default = (not const) if default is None else default
        super().__init__(option_strings, dest, nargs=0, const=const, default=default, required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const)
        _record(namespace, self.dest, option_string)


class _Bool(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _record(namespace, self.dest, option_string)


def add_option(parser, name: str, *aliases: str, **kwargs) -> argparse.Action:
    """``parser.add_argument`` with ``--name``, ``--dashed-name`` and the same for each alias, dest ``name``.

    ``parser`` may be an argument group. ``action`` may be omitted (store), "store_true", "store_false"
    or ``argparse.BooleanOptionalAction``: those record themselves for ``given``; any other action is
    passed on unchanged (and is not recorded).
    """
    action = kwargs.pop("action", None)
    if action in (None, "store"):
        kwargs["action"] = _Store
    elif action in ("store_true", "store_false"):
        kwargs["action"], kwargs["const"] = _Const, action == "store_true"
    elif action is argparse.BooleanOptionalAction:
        kwargs["action"] = _Bool
    else:
        kwargs["action"] = action
    kwargs.setdefault("dest", name)
    return parser.add_argument(*flag_strings(name, *aliases), **kwargs)


# ---------------------------------------------------------------- dataclass fields as options
def is_option(f: dataclasses.Field) -> bool:
    return "help" in f.metadata


def field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default")


def default_text(value) -> str:
    """How the help shows a default: on/off, none, comma-joined tuples, else str()."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == "":
        return "none"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def _field_help(f: dataclasses.Field, default) -> str:
    meta = f.metadata
    if meta.get("hidden"):
        return argparse.SUPPRESS
    text = meta["help"]
    shown = meta.get("default_text")
    if shown is None and not (isinstance(default, bool) and (default is False or meta.get("negate"))):
        shown = default_text(default)
    if shown:
        text = f"{text} (default: {shown})"
    return text.replace("%", "%%")


def add_fields(
    parser: argparse.ArgumentParser,
    cls,
    names: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = (),
    groups: dict | None = None,
) -> list[str]:
    """Add the option fields of dataclass ``cls`` (all, or ``names`` in that order, minus ``exclude``).

    Defaults and help come from the fields; ``groups`` {title: argument group} is shared between calls
    so fields of several dataclasses can fill one help section. Returns the names of the fields added.
    """
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    wanted = [n for n, f in by_name.items() if is_option(f)] if names is None else list(names)
    unknown = [n for n in wanted if n not in by_name or not is_option(by_name[n])]
    if unknown:
        raise ValueError(f"{cls.__name__} has no option field(s) {unknown}")
    groups = {} if groups is None else groups
    added = []
    for name in wanted:
        f = by_name[name]
        if name in exclude:
            continue
        meta, default = f.metadata, field_default(f)
        title = meta.get("group")
        target = parser
        if title is not None:
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            target = groups[title]
        kw = {"default": default, "help": _field_help(f, default), "dest": name}
        if isinstance(default, bool):
            if meta.get("negate"):
                kw["action"] = "store_false"
            else:
                kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
        else:
            conv = meta.get("type") or (type(default) if isinstance(default, int | float) else None)
            if conv is not None:
                kw["type"] = conv
            if "choices" in meta:
                kw["choices"] = meta["choices"]
            elif "flag" in meta:  # the metavar names the flag, not the field
                kw["metavar"] = meta["flag"].upper()
        add_option(target, meta.get("flag", name), *meta.get("aliases", ()), **kw)
        added.append(name)
    return added


def config_from_args(cls, args: argparse.Namespace, **overrides):
    """``cls(**{option field: args value}, **overrides)``; fields absent from ``args`` keep their defaults."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if is_option(f) and hasattr(args, f.name)}
    kw.update(overrides)
    return cls(**kw)

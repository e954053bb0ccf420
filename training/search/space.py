"""Search spaces of ``avemo search``: which combinations of `avemo train` flags a search tries.

The four modes (facts from the grid-search guide and the loss-analysis guide):

    quick     6 named (delta_va, delta_nce) combinations, 8 epochs each, same seed
    grid      delta_va {0.1 .. 1.0} x delta_nce {0.001 .. 0.2} = 7 x 7 = 49 trials
    ablation  encoder_loss_weight x cl_loss_weight x gate_reg_weight = 4 x 3 x 4 = 48 (hierarchical fusion)
    custom    the product of every ``--param NAME=v1,v2,...`` (NAME = any `avemo train` flag)

A *point* is one combination as Optuna stores it, ``{param: value}`` (quick: ``{"combination": "balanced"}``);
``Space.flags(point)`` gives the train flags it sets, ``{"delta_va": 0.4, "delta_nce": 0.005}``, and
``flag_argv`` turns those into command-line words with the train parser's own option table.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field

from avemo.contract.options import UsageError

# the guide's quick search: name -> train flags
QUICK_COMBINATIONS: dict[str, dict[str, float]] = {
    "default": {"delta_va": 0.3, "delta_nce": 0.001},
    "stronger_distillation": {"delta_va": 0.5, "delta_nce": 0.001},
    "stronger_alignment": {"delta_va": 0.3, "delta_nce": 0.01},
    "balanced": {"delta_va": 0.4, "delta_nce": 0.005},
    "conservative": {"delta_va": 0.2, "delta_nce": 0.001},
    "aggressive": {"delta_va": 0.8, "delta_nce": 0.05},
}
# the guide's full grid
LOSS_WEIGHT_GRID: dict[str, tuple] = {
    "delta_va": (0.1, 0.2, 0.3, 0.4, 0.5, 0.8, 1.0),
    "delta_nce": (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
}
# the loss-analysis guide's ablation of the hierarchical fusion's weights
ABLATION_GRID: dict[str, tuple] = {
    "encoder_loss_weight": (0.01, 0.03, 0.05, 0.1),
    "cl_loss_weight": (0.1, 0.2, 0.3),
    "gate_reg_weight": (0.001, 0.005, 0.01, 0.05),
}
COMBINATION = "combination"  # the quick search's one categorical parameter

# train flags every search adds unless the command line gives them (the guide: 8 epochs, early stopping on)
SEARCH_DEFAULTS: tuple[str, ...] = ("--epochs", "8", "--early_stopping_patience", "3")
INFONCE_DEFAULTS = ("--contrastive_proj_dim", "64")  # InfoNCE (delta_nce, cl_loss_weight) reads 64-d projections
INFONCE_FLAGS = {"delta_nce", "cl_loss_weight", "contrastive_weight", "contrastive_temperature"}
# seed 002's delta_nce on a feature file (--dataset mosi|mosei|sims that reads text): InfoNCE(video, text) +
# InfoNCE(audio, text), added by the launcher when delta_nce is searched (a --contrastive_pairs given wins)
FEATURE_INFONCE_DEFAULTS = ("--contrastive_pairs", "text")


@dataclass(frozen=True)
class Mode:
    name: str
    folder: str  # results folder prefix: <folder>_YYYYMMDD_HHMMSS
    description: str
    defaults: tuple[str, ...]  # train flags added unless given (after SEARCH_DEFAULTS; INFONCE_DEFAULTS is
    # added by the launcher whenever an INFONCE_FLAGS weight is searched)


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("quick", "quick_search", "the guide's 6 named (delta_va, delta_nce) combinations", ()),
        Mode("grid", "loss_weight_search", "delta_va x delta_nce, 7 x 7 = 49 trials", ()),
        Mode(
            "ablation",
            "ablation_search",
            "encoder_loss_weight x cl_loss_weight x gate_reg_weight, 4 x 3 x 4 = 48 trials (hierarchical fusion)",
            ("--fusion", "hierarchical"),
        ),
        Mode("custom", "custom_search", "the product of the --param NAME=v1,v2,... lists", ()),
    )
}


@dataclass(frozen=True)
class Space:
    """The grid Optuna's GridSampler walks (``grid``) and what each point means as train flags."""

    grid: dict[str, list] = field(default_factory=dict)  # param -> values (the GridSampler search space)
    combinations: dict[str, dict] | None = None  # quick: combination name -> train flags

    def points(self) -> list[dict]:
        """Every point, in the order the lists were given (the first parameter varies slowest)."""
        names = list(self.grid)
        return [dict(zip(names, values)) for values in itertools.product(*self.grid.values())]

    def flags(self, point: dict) -> dict:
        """The train flags a point sets: {flag name: value}."""
        if self.combinations is not None:
            return dict(self.combinations[point[COMBINATION]])
        return dict(point)

    def label(self, point: dict) -> str:
        """Short readable name: "balanced" or "delta_va=0.4 delta_nce=0.005"."""
        if self.combinations is not None:
            return str(point[COMBINATION])
        return " ".join(f"{k}={v}" for k, v in point.items())

    def slug(self, point: dict) -> str:
        """A folder name for the point's run: the label with path-unsafe characters replaced."""
        return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", self.label(point).replace(" ", ","))

    def to_dict(self) -> dict:
        return {"grid": self.grid, "combinations": self.combinations}

    @classmethod
    def from_dict(cls, d: dict) -> Space:
        return cls(grid={k: list(v) for k, v in d["grid"].items()}, combinations=d.get("combinations"))


def point_key(point: dict) -> str:
    """One string per point, whatever the order of its items (for finding duplicates)."""
    return json.dumps(point, sort_keys=True)


def parse_value(text: str) -> int | float | str:
    """ "8" -> 8, "0.001" -> 0.001, "1e-3" -> 0.001, anything else stays a string."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_param(text: str) -> tuple[str, list]:
    """ "NAME=v1,v2,..." -> (NAME, [v1, v2, ...]); a dashed name is stored with underscores."""
    name, sep, values = text.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not name or not items:
        raise UsageError(f"--param must look like NAME=v1,v2,... (an avemo train flag and its values), got {text!r}")
    parsed = [parse_value(v) for v in items]
    if len({json.dumps(v) for v in parsed}) != len(parsed):
        raise UsageError(f"--param {name}: a value is listed twice ({values})")
    return name, parsed


def build_space(mode: str, params: list[str] | None = None) -> Space:
    """The Space of a mode; ``params`` are the ``--param`` texts (custom only)."""
    params = params or []
    if mode != "custom" and params:
        raise UsageError(f"--param only applies to `avemo search custom` (the {mode} search has a fixed space)")
    if mode == "quick":
        return Space({COMBINATION: list(QUICK_COMBINATIONS)}, combinations=QUICK_COMBINATIONS)
    if mode == "grid":
        return Space({k: list(v) for k, v in LOSS_WEIGHT_GRID.items()})
    if mode == "ablation":
        return Space({k: list(v) for k, v in ABLATION_GRID.items()})
    if mode != "custom":
        raise UsageError(f"unknown search mode {mode!r}; choose from {', '.join(MODES)}")
    if not params:
        raise UsageError("`avemo search custom` needs at least one --param NAME=v1,v2,...")
    grid: dict[str, list] = {}
    for text in params:
        name, values = parse_param(text)
        if name in grid:
            raise UsageError(f"--param {name} is given twice")
        grid[name] = values
    return Space(grid)


def _truthy(flag: str, value) -> bool:
    text = str(value).lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise UsageError(f"--param {flag}: {flag} is an on/off flag; use true/false (got {value!r})")


def flag_action(train_parser, name: str):
    """The train parser's action for ``--name`` (UsageError naming the flag when avemo train has none)."""
    action = train_parser._option_string_actions.get(f"--{name}")  # argparse's own option table
    if action is None:
        raise UsageError(f"--param {name}: `avemo train` has no option --{name} (see avemo train --help)")
    return action


def flag_argv(flags: dict, train_parser) -> list[str]:
    """{flag name: value} -> ["--delta_va", "0.4", ...]; on/off flags become --flag / --no-flag."""
    argv: list[str] = []
    for name, value in flags.items():
        action = flag_action(train_parser, name)
        if action.nargs == 0:  # store_true / store_false / --flag/--no-flag
            on = _truthy(name, value)
            negatable = any(s.startswith("--no-") or s.startswith("--no_") for s in action.option_strings)
            if on:
                argv.append(f"--{name}")
            elif negatable:
                argv.append(f"--no-{name.replace('_', '-')}")
        else:
            argv += [f"--{name}", str(value)]
    return argv

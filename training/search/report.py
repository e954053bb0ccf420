"""What a search writes into its folder, from the study alone (so any worker, on any machine, can write it):

intermediate_results.json  every trial so far; rewritten after every trial
results.json               the same at the end, with the best trial and the wall time
results.md                 finished trials ranked by the objective, as a markdown table (regression runs on
                           a feature file: Corr / MAE / Acc-2 / Acc-7 beside the validation MSE)
heatmap.png                the objective over one or two numeric parameters (quick and grid searches)
best_config.txt            the `avemo train` command line of the best trial
"""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from avemo.training.search import study as st
from avemo.training.search.space import Space

OBJECTIVE_TEXT = {"val_loss": "best validation loss (lower is better)", "val_macro_f1": "best validation macro-F1"}
REGRESSION_LOSS_TEXT = "best validation MSE (lower is better)"
# what trial_row copies from a trial's user attrs (worker.summarise_run and run_trial write them)
ROW_KEYS = (
    "task",
    "best_val_loss",
    "val_macro_f1",
    "test_macro_f1",
    "val_weighted_f1",
    "test_weighted_f1",
    *(f"{split}_{k}" for split in ("val", "test") for k in ("corr", "mae", "mse", "acc2", "acc7")),
    "epochs_run",
    "best_epoch",
    "stopped_early",
    "modality_weights",
    "train_seconds",
    "seconds",
    "reused_finished_run",
    "run_dir",
    "train_argv",
    "worker",
)


def _clean(v):
    """JSON-safe: NaN / inf -> None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def trial_row(t: FrozenTrial, space: Space) -> dict:
    point = st.trial_point(t, space)
    u = t.user_attrs
    row = {
        "number": t.number,
        "state": t.state.name,
        "point": point,
        "label": space.label(point) if point else None,
        "flags": space.flags(point) if point else None,
        "value": t.value,
        **{k: u.get(k) for k in ROW_KEYS},
        "retry_of": t.system_attrs.get("failed_trial"),
        "duplicate_of": u.get("duplicate_of"),
        "error": (u.get("error") or "its worker died or stopped answering") if t.state == TrialState.FAIL else None,
    }
    return _clean(row)


def ranked(rows: list[dict], objective: str) -> list[dict]:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    return sorted(done, key=lambda r: r["value"], reverse=objective == "val_macro_f1")


def _fmt(v, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def is_regression(rows: list[dict]) -> bool:
    """The finished trials regress a score (a feature file's sentiment): the table shows the field's figures."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    return bool(done) and all(r.get("task") == "regression" for r in done)


def objective_text(objective: str, regression: bool) -> str:
    return REGRESSION_LOSS_TEXT if regression and objective == "val_loss" else OBJECTIVE_TEXT[objective]


def weight_names(rows: list[dict]) -> list[str]:
    """Every modality some trial reads, in order (a row from an older search holds [audio, video])."""
    names: dict[str, None] = {}
    for r in rows:
        w = r.get("modality_weights")
        names |= dict.fromkeys(w if isinstance(w, dict) else ("audio", "video") if w else ())
    return list(names) or ["audio", "video"]


def _weights(r: dict, names: list[str]) -> str:
    w = r.get("modality_weights") or {}
    if not isinstance(w, dict):
        w = dict(zip(("audio", "video"), w))
    return " / ".join(_fmt(w.get(m), ".2f") for m in names)


def markdown(rows: list[dict], objective: str, title: str) -> str:
    best = ranked(rows, objective)
    names = weight_names(best or rows)
    regression = is_regression(rows)
    weights = f"weights {' / '.join(names)}"
    if regression:
        # the field's figures: Corr, MAE, Acc-2 (non-zero scores, Non0_acc_2), Acc-7 (Mult_acc_7)
        about = (
            f"Ranked by {objective_text(objective, True)}. Validation loss = MSE of the fused sentiment score; "
            "val Corr / MAE / Acc-2 / Acc-7 = that best validation epoch's; test = the best checkpoint on the test "
            "split (not used to rank). Acc-2 = non-zero binary accuracy (MMSA's Non0_acc_2), Acc-7 = seven-class "
            "accuracy (Mult_acc_7); weights = mean validation modality weights of the best epoch."
        )
        head = [
            "val MSE", "val Corr", "val MAE", "val Acc-2", "val Acc-7",
            "test MSE", "test Corr", "test MAE", "test Acc-2", "test Acc-7",
        ]  # fmt: skip

        def cells(r: dict) -> list[str]:
            return [
                _fmt(r["best_val_loss"]),
                *(_fmt(r.get(f"val_{k}"), ".3f") for k in ("corr", "mae", "acc2", "acc7")),
                _fmt(r.get("test_mse"), ".3f"),
                *(_fmt(r.get(f"test_{k}"), ".3f") for k in ("corr", "mae", "acc2", "acc7")),
            ]
    else:
        weighted = any(r.get("test_weighted_f1") is not None for r in best)  # conversations: the field's F1
        about = (
            f"Ranked by {OBJECTIVE_TEXT[objective]}. Validation loss = mean window cross-entropy of the fused answer; "
            "macro-F1 at clip level (best validation epoch; test = the best checkpoint on the test split, "
            "not used to rank)."
            + (" Conversations: per-utterance figures, weighted F1 the field's." if weighted else "")
        )
        head = ["val loss", "val macro-F1", "test macro-F1"] + ["val weighted-F1", "test weighted-F1"] * weighted

        def cells(r: dict) -> list[str]:
            out = [_fmt(r["best_val_loss"]), _fmt(r["val_macro_f1"], ".3f"), _fmt(r["test_macro_f1"], ".3f")]
            return out + [_fmt(r.get("val_weighted_f1"), ".3f"), _fmt(r.get("test_weighted_f1"), ".3f")] * weighted

    columns = ["rank", "trial", "parameters", *head, "epochs", "stopped early", weights, "seconds"]
    lines = [f"# {title}", "", about, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for i, r in enumerate(best, 1):
        row = [
            str(i),
            str(r["number"]),
            str(r["label"]),
            *cells(r),
            str(r["epochs_run"]),
            "yes" if r["stopped_early"] else "no",
            _weights(r, names),
            _fmt(r["seconds"], ".0f"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    failed = [r for r in rows if r["state"] == "FAIL"]
    dups = [r for r in rows if r["duplicate_of"] is not None]
    if failed or dups:
        lines += [
            "",
            f"Also in the study: {len(failed)} failed trial(s) (retried or reported), {len(dups)} duplicate "
            "claim(s) given up before training.",
        ]
        lines += [
            f"- trial {r['number']} ({r['label']}): {r['error']}"
            + (f"; retried as trial {r['retried_as']}" if r.get("retried_as") is not None else "")
            for r in failed
        ]
    return "\n".join(lines) + "\n"


def heatmap_axes(rows: list[dict]) -> tuple[str, str | None] | None:
    """The numeric train flags the finished trials vary: two (x, y), or one (x, None) drawn as a strip;
    None for none or three and more."""
    flags = [r["flags"] for r in rows if r["state"] == "COMPLETE" and r["flags"]]
    if not flags:
        return None
    names = [n for n in flags[0] if all(isinstance(f.get(n), int | float) for f in flags)]
    varying = [n for n in names if len({f[n] for f in flags}) > 1]
    if len(varying) == 1:
        return varying[0], None
    return (varying[0], varying[1]) if len(varying) == 2 else None


def plot_heatmap(rows: list[dict], objective: str, path: Path, title: str) -> bool:
    """Objective per cell of a one- or two-parameter space (blank where no trial finished); False otherwise."""
    axes = heatmap_axes(rows)
    if axes is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = axes

    def y_of(r: dict):
        return r["flags"][y_name] if y_name is not None else None

    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    xs = sorted({r["flags"][x_name] for r in done})
    ys = sorted({y_of(r) for r in done}) if y_name is not None else [None]
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in done:
        grid[ys.index(y_of(r)), xs.index(r["flags"][x_name])] = r["value"]
    named = {(r["flags"][x_name], y_of(r)): r["label"] for r in done if "=" not in (r["label"] or "=")}
    fig, ax = plt.subplots(
        figsize=(max(5.0, 1.6 + 1.1 * len(xs)), max(3.2 if y_name is None else 3.5, 1.6 + 0.7 * len(ys)))
    )
    cmap = plt.get_cmap("viridis_r" if objective == "val_loss" else "viridis")
    im = ax.imshow(grid, cmap=cmap, aspect="auto", origin="lower")
    best = ranked(rows, objective)[0]
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    for (i, j), v in np.ndenumerate(grid):
        if np.isnan(v):
            continue
        shade = cmap((v - lo) / (hi - lo) if hi > lo else 0.5)
        ink = "black" if 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.5 else "white"
        is_best = best["flags"][x_name] == xs[j] and y_of(best) == ys[i]
        text = f"{v:.4f}" + (f"\n{named[(xs[j], ys[i])]}" if (xs[j], ys[i]) in named else "")
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=ink, fontweight="bold" if is_best else "normal")
        if is_best:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(x_name)
    if y_name is None:
        ax.set_yticks([])
    else:
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_ylabel(y_name)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=objective_text(objective, is_regression(rows)))
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")  # workers may rewrite it at the same moment
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def best_config_text(best: dict, objective: str, mode: str, n_done: int) -> str:
    if best.get("task") == "regression":
        figures = (
            f"val MSE {_fmt(best['best_val_loss'])}, val Corr {_fmt(best.get('val_corr'), '.3f')}; "
            f"test Corr {_fmt(best.get('test_corr'), '.3f')}, MAE {_fmt(best.get('test_mae'), '.3f')}, "
            f"Acc-2 {_fmt(best.get('test_acc2'), '.3f')}, Acc-7 {_fmt(best.get('test_acc7'), '.3f')}"
        )
    else:
        figures = f"val loss {_fmt(best['best_val_loss'])}, val macro-F1 {_fmt(best['val_macro_f1'], '.3f')}"
    return (
        f"# avemo search {mode}: best of {n_done} finished trial(s) by "
        f"{objective_text(objective, best.get('task') == 'regression')}\n"
        f"# trial {best['number']}: {best['label']} -> {figures}\n"
        f"# the exact `avemo train` command of that trial (its run: {best['run_dir']}):\n"
        f"{shlex.join(['avemo', 'train', *best['train_argv']])}\n"
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_reports(ctx, final: bool, extra: dict | None = None) -> dict:
    """Read the study and (re)write the folder's reports; returns the results document."""
    space = Space.from_dict(ctx.space)
    storage = st.open_storage(ctx.storage, ctx.heartbeat, ctx.max_retry)
    study = optuna.load_study(study_name=ctx.study, storage=storage)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    rows = [trial_row(t, space) for t in trials]
    for t, row in zip(trials, rows):  # where each failed trial went: the retry that copied it
        row["retried_as"] = next(
            (u.number for u in trials if t.number in u.system_attrs.get("retry_history", [])[-1:]), None
        )
    best = ranked(rows, ctx.objective)
    spec = study.user_attrs.get(st.SPEC, {})
    folder = Path(ctx.folder)
    doc = {
        "mode": spec.get("mode"),
        "study": ctx.study,
        "storage": st.redact(ctx.storage),
        "objective": ctx.objective,
        "task": "regression" if is_regression(rows) else "classification",
        "direction": "minimize" if ctx.objective == "val_loss" else "maximize",
        "space": space.to_dict(),
        "train_argv": ctx.train_argv,
        "finished": len(best),
        "points": len(space.points()),
        "best": best[0] if best else None,
        "trials": rows,
        **(extra or {}),
    }
    _atomic_write(folder / "intermediate_results.json", json.dumps(doc, indent=2))
    if final:
        _atomic_write(folder / "results.json", json.dumps(doc, indent=2))
    title = f"avemo search {spec.get('mode', '')}: {len(best)}/{len(space.points())} trials finished\n{folder.name}"
    _atomic_write(folder / "results.md", markdown(rows, ctx.objective, title.replace("\n", " (") + ")"))
    if best:
        _atomic_write(folder / "best_config.txt", best_config_text(best[0], ctx.objective, spec.get("mode"), len(best)))
        plot_heatmap(rows, ctx.objective, folder / "heatmap.png", title)
    return doc

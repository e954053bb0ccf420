"""Peer benchmark: MMSA 2.2.1's own trainer and ours on the same MOSEI-layout feature file, side by side.

    python benchmarks/features_vs_mmsa.py --data /tmp/mosei.pkl --generate --epochs 10 --seed 1111 \
        [--models LF_DNN,TFN,LMF,MulT,EF_LSTM,MFN] [--samples 600,150,150] [--json out.json] [--no-ours]

Runs in the main venv. ``--data`` is a MOSEI-layout pickle (train/valid/test, each with text [N, L, 768],
audio [N, La, 74], vision [N, Lv, 35], audio_lengths / vision_lengths, regression_labels, ...); with
``--generate`` a missing file is written first by ``avemo.training.synthetic.features.write_mmsa_file``
(unaligned, ``--samples``, seed 0).

MMSA half: creates the separate venv .venv-mmsa if it is missing (``benchmarks/mmsa_env.sh``: MMSA==2.2.1 on
torch 2.14.1), then runs ``benchmarks/mmsa_runner.py`` in it, one subprocess per model with a time limit
(``--timeout`` seconds; a model that fails or times out is reported and the others still run). Each model
trains exactly ``--epochs`` epochs with MMSA's own trainer and default MOSEI hyper-parameters on the CPU, and
MMSA's test metrics of its best-validation-loss checkpoint are reported as MMSA computes them.

Our half: ``run_ours``, ``avemo train`` on the same file, splits and seed, in this process with the same torch
thread count. Both halves produce rows of the same shape and ``format_table`` prints them in one table with the
same columns.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
MMSA_VENV = ROOT / ".venv-mmsa"
MMSA_ENV_SCRIPT = ROOT / "benchmarks" / "mmsa_env.sh"
MMSA_RUNNER = ROOT / "benchmarks" / "mmsa_runner.py"
DEFAULT_MODELS = "LF_DNN,TFN,LMF,MulT,EF_LSTM,MFN"

# MMSA's MOSEI regression metrics (MetricsTop) and the test loss (mean L1), in MMSA's order.
METRICS = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"]


def _test_metric(name: str):
    return lambda row: (row.get("test") or {}).get(name)


# (header, getter on a row, format): the columns every row gets, ours and MMSA's alike.
COLUMNS = [
    *[(m, _test_metric(m), "{:.4f}") for m in [*METRICS, "Loss"]],
    ("epochs", lambda r: r.get("epochs_trained"), "{:d}"),
    ("best", lambda r: r.get("best_epoch"), "{:d}"),
    ("s/epoch", lambda r: r.get("seconds_per_epoch"), "{:.2f}"),
    ("train s/ep", lambda r: r.get("train_loop_seconds_per_epoch"), "{:.2f}"),
    ("params", lambda r: r.get("params"), "{:,d}"),
    ("threads", lambda r: r.get("threads"), "{:d}"),
    ("load", lambda r: r.get("load_average"), "{:.1f}"),
]


# ---------------------------------------------------------------------------------------------------------------
# OUR HALF -- to be written by the trainer integration
# ---------------------------------------------------------------------------------------------------------------
# flags of our run: the MOSEI text-audio-video regression model; lr 1e-3 and no modality dropout were the best
# of five settings tried on a file of this size (docs/features.md); everything else is `avemo train`'s default
OURS_FLAGS = [
    "--dataset",
    "mosei",
    "--modalities",
    "atv",
    "--fusion",
    "gated",
    "--lr",
    "1e-3",
    "--modality_dropout",
    "0",
]


def run_ours(data: Path, epochs: int, seed: int, workdir: Path | None = None) -> dict:
    """OUR TRAINER: ``avemo train`` with ``OURS_FLAGS`` on ``data`` for ``epochs`` epochs with ``seed``, in this
    process (the torch thread count set by ``main`` applies) -> ``{label: row}`` with the MMSA rows' keys:
      test: MMSA's MOSEI metrics of the best-validation-loss (MSE) epoch, computed by
            ``avemo.training.evaluation.sentiment_metrics`` (MetricsTop's definitions), and Loss = the mean over
            test batches of 64 of each batch's mean L1, as MMSA reports it;
      epochs_trained, best_epoch (1-based); seconds_per_epoch = the whole training call (with per-epoch
      validation and checkpointing) / epochs; params; threads; load_average.
    """
    import numpy as np
    import torch

    from avemo.cli import build_parser
    from avemo.training.cli import train_config_from_args
    from avemo.training.evaluation.predict import predict
    from avemo.training.models.checkpoint import model_from_checkpoint
    from avemo.training.train.loop import prepare_run, train

    out = (workdir or Path(tempfile.mkdtemp(prefix="features_vs_mmsa_"))) / f"ours-seed{seed}"
    argv = ["train", *OURS_FLAGS, "--data_root", str(data), "--epochs", str(epochs), "--seed", str(seed)]
    argv += ["--out_dir", str(out), "--cache_dir", str(out.parent / "cache"), "--early_stopping_patience", "1000"]
    args = build_parser("train").parse_args([*argv, "--no_progress"])
    cfg = replace(train_config_from_args(args), num_threads=torch.get_num_threads())  # the MMSA runs' count
    start = time.time()
    results = train(cfg)
    seconds = time.time() - start
    history = results["history"]
    best_epoch = 1 + int(np.argmin([h["val_loss"] for h in history]))
    model, _ = model_from_checkpoint(results["checkpoint"])
    datasets, *_ = prepare_run(cfg, None, False)  # type: ignore[arg-type]  # a feature run reads no geometry
    pred = predict(model, datasets["test"], batch_size=64)
    l1 = np.abs(pred["prediction"] - pred["label"])
    batch_l1 = [float(l1[i : i + 64].mean()) for i in range(0, len(l1), 64)]
    row = {
        "test": {**results["test"]["regression"], "Loss": float(np.mean(batch_l1))},
        "epochs_trained": len(history),
        "best_epoch": best_epoch,
        "seconds_per_epoch": seconds / len(history),
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    return {f"avemo gated atv seed {seed}": row}


# ---------------------------------------------------------------------------------------------------------------
# MMSA'S HALF and the shared table
# ---------------------------------------------------------------------------------------------------------------
def generate(path: Path, samples: tuple[int, int, int], seq_lens: tuple[int, int, int] | None = None) -> None:
    """Writes a MOSEI-layout unaligned feature file with the synthetic generator (seed 0)."""
    try:
        from avemo.training.synthetic.features import write_mmsa_file
    except ImportError as exc:
        sys.exit(f"--generate needs avemo.training.synthetic.features.write_mmsa_file ({exc}); pass an existing --data")
    kwargs = {"seq_lens": dict(zip(("text", "audio", "video"), seq_lens))} if seq_lens else {}
    write_mmsa_file(path, dataset="mosei", aligned=False, samples=samples, seed=0, **kwargs)


def ensure_mmsa_venv(venv: Path = MMSA_VENV) -> Path:
    """Creates .venv-mmsa with mmsa_env.sh unless it already holds MMSA; returns its python."""
    python = venv / "bin" / "python"
    ok = python.exists() and subprocess.run([python, "-c", "import MMSA"], capture_output=True).returncode == 0
    if not ok:
        print(f"features_vs_mmsa: creating {venv} (benchmarks/mmsa_env.sh)", flush=True)
        subprocess.run(["bash", str(MMSA_ENV_SCRIPT)], check=True, env={**os.environ, "MMSA_VENV": str(venv)})
    return python


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_mmsa_model(python: Path, data: Path, model: str, args: argparse.Namespace, workdir: Path) -> tuple[dict, dict]:
    """One model in one mmsa_runner.py subprocess; returns (row, runner's file description)."""
    out_json = workdir / f"{model}.json"
    log = workdir / f"{model}.log"
    cmd = [
        str(python),
        str(MMSA_RUNNER),
        "--data",
        str(data),
        "--models",
        model,
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--json",
        str(out_json),
        "--workdir",
        str(workdir / model),
        "--num-workers",
        str(args.num_workers),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    print(f"features_vs_mmsa: MMSA {model}: {args.epochs} epochs (limit {args.timeout} s, log {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as log_file:
        # own session: on a timeout the runner and any DataLoader workers it started are ended together
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
            error = None if rc == 0 else f"mmsa_runner exited {rc}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            error = f"timed out after {args.timeout} s"
    wall = time.perf_counter() - t0
    result = json.loads(out_json.read_text()) if out_json.exists() else {}
    row = dict(result.get("models", {}).get(model) or {})
    if error and "error" not in row:
        row["error"] = error
    if "error" in row:
        print(f"features_vs_mmsa: MMSA {model} FAILED: {row['error']}\n{_tail(log)}", file=sys.stderr, flush=True)
    else:
        print(f"features_vs_mmsa: MMSA {model} done in {wall:.0f} s", flush=True)
    row.update(trainer="MMSA", model=model, process_seconds=wall, runner_log=str(log))
    return row, result.get("file", {})


def run_mmsa(data: Path, models: list[str], args: argparse.Namespace, workdir: Path) -> tuple[dict, dict]:
    """MMSA's half: {"MMSA <model>": row} for every model, and the file description the runner read."""
    python = ensure_mmsa_venv(args.venv)
    rows: dict = {}
    info: dict = {}
    for model in models:
        rows[f"MMSA {model}"], file_info = run_mmsa_model(python, data, model, args, workdir)
        info = info or file_info
    return rows, info


def format_table(rows: dict[str, dict]) -> str:
    """One line per row (ours and MMSA's), the same columns for all; '-' where a row lacks a value."""
    header = ["trainer / model", *[c[0] for c in COLUMNS]]
    lines = []
    for label, row in rows.items():
        if "error" in row:
            lines.append([label, f"FAILED: {row['error']}"])
            continue
        cells = [label]
        for _, get, fmt in COLUMNS:
            value = get(row)
            cells.append("-" if value is None else fmt.format(value))
        lines.append(cells)
    widths = [max([len(h), *(len(c[i]) for c in lines if len(c) == len(header))]) for i, h in enumerate(header)]

    def fmt_line(cells: list[str]) -> str:
        if len(cells) != len(header):  # a failed row: label + message
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([fmt_line(header), rule, *map(fmt_line, lines)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MOSEI-layout feature pickle")
    ap.add_argument("--generate", action="store_true", help="write --data with write_mmsa_file if it is missing")
    ap.add_argument("--samples", default="600,150,150", help="train,valid,test sizes for --generate")
    ap.add_argument("--seq-lens", help="T,A,V padded lengths for --generate (default MOSEI's unaligned 50,500,375)")
    ap.add_argument("--models", default=DEFAULT_MODELS, help="MMSA models (non-BERT), comma-separated")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1111)
    ap.add_argument("--json", type=Path, help="write all rows and settings here")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per MMSA model")
    ap.add_argument("--num-workers", type=int, default=0, help="MMSA DataLoader workers")
    # 1 by default: on the 2 shared cores here, 2 OpenMP threads next to other work ran MulT 5x slower than 1.
    # Ours must run with the same count for the seconds to compare.
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the MMSA runner (0: torch's default)")
    ap.add_argument("--venv", type=Path, default=MMSA_VENV, help="MMSA's venv (created if missing)")
    ap.add_argument("--workdir", type=Path, help="logs, per-model JSON, MMSA's checkpoints (default: a temp folder)")
    ap.add_argument("--no-ours", action="store_true", help="MMSA's half only")
    ap.add_argument("--no-mmsa", action="store_true", help="our half only")
    args = ap.parse_args(argv)

    data = args.data.resolve()
    if not data.exists():
        if not args.generate:
            ap.error(f"{data} does not exist (add --generate to write it)")
        samples = tuple(int(n) for n in args.samples.split(","))
        seq_lens = tuple(int(n) for n in args.seq_lens.split(",")) if args.seq_lens else None
        if len(samples) != 3 or (seq_lens and len(seq_lens) != 3):
            ap.error("--samples takes train,valid,test and --seq-lens T,A,V")
        print(f"features_vs_mmsa: writing {data}", flush=True)
        generate(data, samples, cast("tuple[int, int, int] | None", seq_lens))  # lengths checked above
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="features_vs_mmsa_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    rows: dict[str, dict] = {}
    notes: list[str] = []
    if not args.no_ours:
        if args.threads:  # ours trains in this process (or reads this) with the MMSA runs' thread count
            import torch

            torch.set_num_threads(args.threads)
        try:
            for label, row in run_ours(data, args.epochs, args.seed, workdir).items():
                rows[label] = {"trainer": "ours", **row}
        except NotImplementedError as exc:
            notes.append(f"ours: not run ({exc})")
        except Exception as exc:  # a failure of ours must not cost the MMSA half
            rows["ours"] = {"trainer": "ours", "error": f"{type(exc).__name__}: {exc}"}
            print(f"features_vs_mmsa: ours FAILED:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    info: dict = {}
    if not args.no_mmsa:
        mmsa_rows, info = run_mmsa(data, models, args, workdir)
        rows.update(mmsa_rows)

    print()
    if info:
        lens, dims, n = info["seq_lens"], info["feature_dims"], info["samples"]
        print(
            f"{data.name}: {info['bytes'] / 2**20:.0f} MiB, train/valid/test {n['train']}/{n['valid']}/{n['test']}, "
            f"seq lens T/A/V {lens[0]}/{lens[1]}/{lens[2]}, dims {dims[0]}/{dims[1]}/{dims[2]}, "
            f"{'aligned' if info['aligned'] else 'unaligned'}; {args.epochs} epochs, seed {args.seed}"
        )
    print(format_table(rows))
    print(
        "test metrics of the best-validation-loss epoch (MMSA's MetricsTop, fractions; Loss = test L1); s/epoch = "
        "training call / epochs (with per-epoch validation); train s/ep = training batches only"
    )
    for note in notes:
        print(note)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"data": str(data), "file": info, "epochs": args.epochs, "seed": args.seed, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if any("error" in r for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

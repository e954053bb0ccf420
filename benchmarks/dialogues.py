"""Conversations: what dialogue context and JOYFUL's losses are worth, as mean ± std over seeds.

    python benchmarks/dialogues.py --data /tmp/iemocap.pkl --generate --seeds 1,2,3 --epochs 40 \
        [--dataset iemocap] [--parts context,joyful] [--json out.json]

``--data`` is a conversation feature file (IEMOCAP or MELD tuple); with ``--generate`` a missing one is
written first by ``avemo.training.synthetic.dialogues.write_dialogue_file`` (seed 0, the layout of
``--dataset``). Every row is ``avemo train`` on that file, once per seed (the seed sets the weights and the
batch order; the splits are the file's, the same for every seed), ``--epochs`` epochs at most with early
stopping (patience ``--patience``) on validation weighted F1; the test figures are those of the best
validation epoch, per utterance.

  context  the gated fusion with --context none (each utterance alone), full (the dialogue's past and future
           utterances) and past (only what was said before: a live conversation)
  joyful   --preset joyful (NLL + 0.2 graph contrastive + 0.05 reconstruction + 0.01 gate regulariser), then
           without the graph contrastive loss (--cl_loss_weight 0), without the reconstruction loss
           (--encoder_loss_weight 0), and without either

Prints a Markdown table per part (weighted F1, accuracy, macro-F1 as mean ± std, epochs, seconds) and the
gains over the first row of the part, computed from the same runs; ``--json`` writes every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

PARTS = {
    "context": [
        ("gated, no context", ["--fusion", "gated", "--context", "none"]),
        ("gated, full context", ["--fusion", "gated", "--context", "full"]),
        ("gated, past-only context", ["--fusion", "gated", "--context", "past"]),
    ],
    "joyful": [
        ("JOYFUL (all losses)", ["--preset", "joyful"]),
        ("no graph contrastive", ["--preset", "joyful", "--cl_loss_weight", "0"]),
        ("no reconstruction", ["--preset", "joyful", "--encoder_loss_weight", "0"]),
        ("neither", ["--preset", "joyful", "--cl_loss_weight", "0", "--encoder_loss_weight", "0"]),
    ],
}
METRICS = ("weighted_f1", "accuracy", "macro_f1")


def run_one(data: Path, dataset: str, flags: list[str], seed: int, epochs: int, patience: int, out: Path) -> dict:
    """One ``avemo train`` in this process -> {metric: test value, epochs, seconds}."""
    import torch

    from avemo.cli import build_parser
    from avemo.training.cli import train_config_from_args
    from avemo.training.train.loop import train

    argv = ["train", "--dataset", dataset, "--data_root", str(data), *flags, "--seed", str(seed)]
    argv += ["--epochs", str(epochs), "--early_stopping_patience", str(patience), "--out_dir", str(out)]
    cfg = train_config_from_args(build_parser("train").parse_args([*argv, "--no_progress"]))
    cfg = replace(cfg, num_threads=torch.get_num_threads())
    start = time.time()
    results = train(cfg)
    test = results["test"]["clip"]
    return {
        **{m: test[m] for m in METRICS},
        "epochs": results["epochs_run"],
        "seconds": time.time() - start,
        "best_val_weighted_f1": results["best_val_weighted_f1"],
        "argv": argv,
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(part: str, rows: list[dict]) -> str:
    """Markdown table of one part; "gain" = the row's mean weighted F1 minus the first row's."""
    lines = [
        f"### {part}",
        "",
        "| model | weighted F1 | accuracy | macro-F1 | gain (wF1) | epochs | s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    base = mean_std([r["weighted_f1"] for r in rows[0]["runs"]])[0]
    for row in rows:
        cells = []
        for m in METRICS:
            mu, sd = mean_std([r[m] for r in row["runs"]])
            cells.append(f"{mu:.3f} ± {sd:.3f}")
        gain = mean_std([r["weighted_f1"] for r in row["runs"]])[0] - base
        epochs = statistics.fmean(r["epochs"] for r in row["runs"])
        seconds = statistics.fmean(r["seconds"] for r in row["runs"])
        lines.append(f"| {row['name']} | {' | '.join(cells)} | {gain:+.3f} | {epochs:.0f} | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="conversation feature file")
    p.add_argument("--dataset", default="iemocap", choices=("iemocap", "iemocap_4", "meld", "meld_sentiment"))
    p.add_argument("--generate", action="store_true", help="write --data first when it is missing")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated training seeds (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--parts", default="context,joyful", help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--workdir", type=Path, default=None, help="run folders (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="write every run here")
    args = p.parse_args(argv)
    if args.generate and not args.data.exists():
        from avemo.training.synthetic.dialogues import write_dialogue_file

        write_dialogue_file(args.data, layout="meld" if args.dataset.startswith("meld") else "iemocap", seed=0)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dialogues_bench_"))
    doc = {"data": str(args.data), "dataset": args.dataset, "seeds": seeds, "epochs": args.epochs, "parts": {}}
    doc["cpu"] = {"threads": os.cpu_count(), "load_average": os.getloadavg()[0]}
    for part in parts:
        rows = []
        for i, (name, flags) in enumerate(PARTS[part]):
            runs = []
            for seed in seeds:
                out = work / part / f"{i}-seed{seed}"
                runs.append(run_one(args.data, args.dataset, flags, seed, args.epochs, args.patience, out))
                print(f"[{part}] {name} seed {seed}: test weighted F1 {runs[-1]['weighted_f1']:.3f}", file=sys.stderr)
            rows.append({"name": name, "flags": flags, "runs": runs})
        doc["parts"][part] = rows
        print(table(part, rows) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

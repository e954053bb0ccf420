"""Runs MMSA 2.2.1's own trainer (``MMSA.MMSA_run``) on a MOSEI-layout feature pickle, on CPU, and writes a JSON.

Runs INSIDE .venv-mmsa (``bash benchmarks/mmsa_env.sh`` creates it); it imports nothing from avemo. Normally
started by ``benchmarks/features_vs_mmsa.py``, one model per process; by hand:

    .venv-mmsa/bin/python benchmarks/mmsa_runner.py --data FILE.pkl --models LF_DNN,TFN --epochs 10 --seed 1111 \
        --json out.json

For each model: MMSA's default regression config for ``mosei`` (config_regression.json in the package), with
``featurePath`` / ``custom_feature`` set to FILE, ``feature_dims`` and ``seq_lens`` read from FILE's arrays,
``need_data_aligned`` False when FILE is unaligned (its text / audio / vision lengths differ), ``use_bert`` False
(the non-BERT models read the ``text`` array) and ``early_stop`` raised to ``--epochs``; then ``MMSA_run`` with
one seed and ``gpu_ids=[]``. MMSA tests the checkpoint of the epoch with the lowest validation loss (its
``KeyEval`` for MOSEI) and returns the test metrics; they go to the JSON unchanged (numpy floats as floats,
NaN as null).

Shims (each applied here, in this process only; MMSA's installed files are not edited):
- ``CUDA_VISIBLE_DEVICES=""`` before torch loads: ``gpu_ids=[]`` means "pick the freest GPU" to MMSA, so on a
  CUDA machine it would leave the CPU; hiding the GPUs keeps every run on the CPU.
- ``torch.cuda.set_device`` is a no-op for a CPU device: ``MMSA_run`` calls it unconditionally with
  ``args.device``, and torch raises "Expected a cuda device, but got: cpu".
- ``torch.optim.lr_scheduler.ReduceLROnPlateau`` drops a ``verbose=`` argument: MMSA's MulT trainer passes
  ``verbose=True``, which torch removed (TypeError); installed before MMSA is imported because its trainer
  modules bind the name at import time.
- ``TQDM_DISABLE=1`` (unless ``--progress``): MMSA wraps every loader in tqdm; the bars would flood the log.

Instrumentation (wrappers around MMSA's objects, not changes to what it computes):
- ``ATIO.getTrain`` is wrapped so that the returned trainer's ``do_train`` (a) gets a train loader that counts
  epochs and stops MMSA's ``while True`` loop when epoch ``--epochs + 1`` would start -- MMSA 2.2.1 has no
  max-epochs setting, only ``early_stop`` (epochs without a better validation loss), which this sets to
  ``--epochs`` so it cannot fire first; with ``--epochs 0`` MMSA's own early stopping decides --, (b) is timed:
  ``train_seconds`` is the wall time of ``do_train`` (every epoch's training batches, the validation pass and
  the checkpoint save MMSA does each epoch), ``seconds_per_epoch`` = ``train_seconds / epochs_trained``, and
  ``train_loop_seconds_per_epoch`` times the training batches alone; (c) counts the trainable parameters the
  way MMSA's ``count_parameters`` does. The trainer's ``do_test`` is wrapped to record each epoch's
  validation results (``valid_loss``) and so the epoch whose checkpoint was tested (``best_epoch``).
- ``MMSA.run._run`` is wrapped to keep the test metrics it returns (``MMSA_run`` itself returns None and only
  writes ``mean*100, std`` per metric to ``<workdir>/results/normal/mosei.csv``).
- The ``MMSA`` logger's handlers are removed after each model (``MMSA_run`` adds a new pair on every call).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

# Single-task models that read pre-extracted features (no BERT weights to download). Names as MMSA spells them.
NON_BERT_MODELS = ["LF_DNN", "EF_LSTM", "TFN", "LMF", "MFN", "Graph_MFN", "MFM", "MulT"]
METRICS = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"]
CONFIG_KEYS = [
    "batch_size",
    "learning_rate",
    "weight_decay",
    "early_stop",
    "KeyEval",
    "need_data_aligned",
    "need_model_aligned",
    "need_normalized",
    "use_bert",
    "feature_dims",
    "seq_lens",
]


class EpochLimitReached(Exception):
    """Raised by the counting train loader when epoch ``limit + 1`` would start."""


class EpochCountingLoader:
    """Stands in for MMSA's train DataLoader: counts and times passes; refuses the pass after ``limit``."""

    def __init__(self, loader, limit: int):
        self.loader = loader
        self.limit = limit  # <= 0: no limit (MMSA's own early stopping ends training)
        self.starts: list[float] = []  # perf_counter() at the start of each epoch's training pass
        self.loop_seconds: list[float] = []  # training batches of each completed pass

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        if self.limit > 0 and len(self.loop_seconds) >= self.limit:
            raise EpochLimitReached
        t0 = time.perf_counter()
        self.starts.append(t0)
        yield from self.loader
        self.loop_seconds.append(time.perf_counter() - t0)


def apply_shims() -> None:
    """The compatibility shims of the module docstring; call before importing MMSA."""
    import torch
    import torch.optim.lr_scheduler as lr_scheduler

    original_set_device = torch.cuda.set_device

    def set_device(device) -> None:
        if isinstance(device, torch.device | str) and torch.device(device).type == "cpu":
            return
        original_set_device(device)

    torch.cuda.set_device = set_device

    base: Any = lr_scheduler.ReduceLROnPlateau  # a class to derive from (mypy cannot take a variable as a base)
    if getattr(base, "_mmsa_shim", False):
        return

    class ReduceLROnPlateau(base):
        _mmsa_shim = True

        def __init__(self, *args, verbose=None, **kwargs):  # MMSA's MulT passes verbose=True
            super().__init__(*args, **kwargs)

    lr_scheduler.ReduceLROnPlateau = ReduceLROnPlateau  # type: ignore[misc]  # the shim replaces torch's class


def describe_file(path: Path) -> dict:
    """Feature dims, sequence lengths, alignment and sample counts, read from the pickle's arrays."""
    with open(path, "rb") as f:
        data = pickle.load(f)
    train = data["train"]
    lens = [int(train[m].shape[1]) for m in ("text", "audio", "vision")]
    dims = [int(train[m].shape[2]) for m in ("text", "audio", "vision")]
    aligned = lens[0] == lens[1] == lens[2]
    if not aligned and not ("audio_lengths" in train and "vision_lengths" in train):
        raise ValueError(f"{path}: unaligned (lengths {lens}) but has no audio_lengths / vision_lengths")
    return {
        "feature_dims": dims,
        "seq_lens": lens,
        "aligned": aligned,
        "samples": {split: len(data[split]["regression_labels"]) for split in ("train", "valid", "test")},
        "bytes": path.stat().st_size,
    }


def _number(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, bool | str) or v is None:
        return v
    if isinstance(v, int | float) or hasattr(v, "item"):
        try:
            return _number(v) if not isinstance(v, int) else v
        except (TypeError, ValueError):
            return str(v)
    return str(v)


class Instrument:
    """Installs the wrappers of the module docstring around MMSA and collects what one model's run did."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.reset()

    def reset(self) -> None:
        self.run: dict = {}

    def install(self) -> None:
        import MMSA.run as mmsa_run
        from MMSA.trains import ATIO

        inst = self
        original_get_train = ATIO.getTrain
        original_run = mmsa_run._run

        def get_train(self, args):
            trainer = original_get_train(self, args)
            inst.wrap_trainer(trainer, args)
            return trainer

        def run(args, *a, **kw):
            result = original_run(args, *a, **kw)
            inst.run["test"] = result
            return result

        ATIO.getTrain = get_train
        mmsa_run._run = run

    def wrap_trainer(self, trainer, args) -> None:
        inst = self
        do_train, do_test = trainer.do_train, trainer.do_test
        inst.run["config"] = {k: args.get(k) for k in CONFIG_KEYS}
        inst.run["valid"] = []

        def timed_do_train(model, dataloader, *a, **kw):
            inst.run["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            counting = EpochCountingLoader(dataloader["train"], inst.epochs)
            loaders = dict(dataloader, train=counting)
            t0 = time.perf_counter()
            try:
                out = do_train(model, loaders, *a, **kw)
                stop = "mmsa_early_stop"
            except EpochLimitReached:
                out = None
                stop = "epoch_limit"
            seconds = time.perf_counter() - t0
            n = len(counting.loop_seconds)
            inst.run.update(
                stopped_by=stop,
                epochs_trained=n,
                train_seconds=seconds,
                seconds_per_epoch=seconds / n if n else None,
                train_loop_seconds_per_epoch=sum(counting.loop_seconds) / n if n else None,
                epoch_seconds=[b - a for a, b in zip(counting.starts, counting.starts[1:] + [t0 + seconds])][:n],
            )
            return out

        def recording_do_test(model, dataloader, mode="VAL", *a, **kw):
            result = do_test(model, dataloader, mode, *a, **kw)
            if mode == "VAL":
                inst.run["valid"].append(dict(result))
            return result

        trainer.do_train = timed_do_train
        trainer.do_test = recording_do_test

    def finish(self, key_eval: str = "Loss") -> dict:
        """Adds best_epoch (MMSA's rule: first epoch improving the minimum by 1e-6) and returns the record."""
        run = self.run
        best, best_epoch = 1e8, 0
        for i, res in enumerate(run.get("valid", []), 1):
            if res[key_eval] <= best - 1e-6:
                best, best_epoch = res[key_eval], i
        run["best_epoch"] = best_epoch
        run["valid_loss"] = [res["Loss"] for res in run.pop("valid", [])]
        return run


def run_model(mmsa_run, inst: Instrument, name: str, data: Path, info: dict, args, workdir: Path) -> dict:
    overrides = {
        "featurePath": str(data),
        "feature_dims": list(info["feature_dims"]),
        "seq_lens": list(info["seq_lens"]),
        "need_data_aligned": info["aligned"],
        "use_bert": False,
    }
    if args.epochs > 0:
        overrides["early_stop"] = args.epochs  # MMSA's early stop cannot fire before the epoch limit
    inst.reset()
    t0 = time.perf_counter()
    mmsa_run(
        name,
        "mosei",
        config=overrides,
        seeds=[args.seed],
        is_tune=False,
        custom_feature=str(data),
        gpu_ids=[],
        num_workers=args.num_workers,
        verbose_level=0 if args.quiet else 1,
        model_save_dir=workdir / "models",
        res_save_dir=workdir / "results",
        log_dir=workdir / "logs",
    )
    record = inst.finish()
    record["threads"] = args.threads_used
    record["load_average"] = os.getloadavg()[0]  # 1-minute load when it ended: > threads means shared cores
    record["wall_seconds"] = time.perf_counter() - t0
    record["log"] = str(workdir / "logs" / f"{name.lower()}-mosei.log")
    record["result_csv"] = str(workdir / "results" / "normal" / "mosei.csv")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MOSEI-layout feature pickle (train/valid/test)")
    ap.add_argument("--models", default="LF_DNN,TFN,LMF,MulT,EF_LSTM,MFN", help="comma-separated MMSA model names")
    ap.add_argument("--epochs", type=int, default=10, help="train exactly N epochs (0: MMSA's own early stopping)")
    ap.add_argument("--seed", type=int, default=1111)
    ap.add_argument("--json", type=Path, required=True, help="where to write the results")
    ap.add_argument("--workdir", type=Path, help="MMSA's model/result/log folders (default: a new temp folder)")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (MMSA's default is 4)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--progress", action="store_true", help="keep MMSA's tqdm bars")
    ap.add_argument("--quiet", action="store_true", help="MMSA logs errors only (its per-epoch lines otherwise)")
    args = ap.parse_args(argv)

    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if not args.progress:
        os.environ["TQDM_DISABLE"] = "1"
    apply_shims()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads_used = torch.get_num_threads()
    import MMSA
    from MMSA import MMSA_run

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = {m.lower(): m for m in NON_BERT_MODELS}
    unknown = [m for m in models if m.lower() not in known]
    if unknown:
        ap.error(f"not a non-BERT MMSA model: {unknown} (choose from {NON_BERT_MODELS})")
    models = [known[m.lower()] for m in models]
    data = args.data.resolve()
    info = describe_file(data)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="mmsa_run_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    out = {
        "trainer": "MMSA",
        "mmsa_version": _mmsa_version(MMSA),
        "torch": torch.__version__,
        "device": "cpu",
        "threads": args.threads_used,
        "data": str(data),
        "file": info,
        "dataset_name": "mosei",
        "epochs_requested": args.epochs,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "workdir": str(workdir),
        "timing": "seconds_per_epoch = wall time of the trainer's do_train (training batches + MMSA's per-epoch "
        "validation pass + checkpoint save) / epochs_trained; train_loop_seconds_per_epoch = training batches only",
        "models": {},
    }
    inst = Instrument(args.epochs)
    inst.install()
    failed = 0
    for name in models:
        print(
            f"mmsa_runner: {name} on {data.name} ({args.epochs or 'early-stop'} epochs, seed {args.seed})", flush=True
        )
        try:
            record = run_model(MMSA_run, inst, name, data, info, args, workdir)
        except Exception as exc:  # one model failing must not lose the others
            failed += 1
            record = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            print(f"mmsa_runner: {name} FAILED: {record['error']}", file=sys.stderr, flush=True)
        finally:
            mmsa_logger = logging.getLogger("MMSA")
            for handler in list(mmsa_logger.handlers):
                mmsa_logger.removeHandler(handler)
                handler.close()
        out["models"][name] = _jsonable(record)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")  # after every model: a later crash keeps these
        if "test" in record:
            t = record["test"]
            print(
                f"mmsa_runner: {name} done: {record['epochs_trained']} epochs, "
                f"{record['seconds_per_epoch']:.2f} s/epoch, test "
                + " ".join(f"{k}={t[k]}" for k in [*METRICS, "Loss"] if k in t),
                flush=True,
            )
    return 1 if failed else 0


def _mmsa_version(module) -> str:
    try:
        from importlib.metadata import version

        return version("MMSA")
    except Exception:
        return getattr(module, "__version__", "unknown")


if __name__ == "__main__":
    sys.exit(main())

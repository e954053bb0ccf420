"""Run logging sinks: TensorBoard (on by default) and Weights & Biases (``--wandb``).

Logging must never fail a run: a sink that cannot start or write is reported once and switched off.
W&B runs online when an API key is known (``WANDB_API_KEY`` or a ``~/.netrc`` entry for
api.wandb.ai) and offline otherwise, writing to ``<out_dir>/wandb/`` (upload later with
``wandb sync <out_dir>/wandb/offline-run-*``). ``WANDB_MODE`` set by the user wins.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from tqdm import tqdm


def wandb_mode() -> str:
    """ "online" when an API key is known, else "offline"; an explicit WANDB_MODE wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


class RunLogger:
    """Scalars to every enabled sink. ``log({"loss": 0.3}, step, prefix="step/")``."""

    def __init__(
        self,
        out_dir: str | Path,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "avemo",
        run_name: str = "",
        config: dict | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.tb = self._start_tensorboard() if tensorboard else None
        self.wandb = self._start_wandb(wandb_project, run_name or self.out_dir.name, config or {}) if wandb else None

    def _start_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(str(self.out_dir / "tensorboard"))
        except Exception as e:  # noqa: BLE001 - logging must never fail the run
            tqdm.write(f"TensorBoard logging off: {type(e).__name__}: {e}")
            return None

    def _start_wandb(self, project: str, name: str, config: dict):
        try:
            import wandb
        except Exception as e:  # noqa: BLE001
            tqdm.write(f"W&B logging off: wandb cannot be imported ({type(e).__name__}: {e}); pip install wandb")
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        mode = wandb_mode()
        for attempt in [mode, "offline"] if mode == "online" else [mode]:
            try:
                run = wandb.init(
                    project=project,
                    name=name,
                    dir=str(self.out_dir),
                    config=config,
                    mode=attempt,  # type: ignore[arg-type]  # WANDB_MODE as set (wandb checks it)
                    reinit="create_new",
                    settings=wandb.Settings(init_timeout=60, console="off"),
                )
                for axis in ("step", "epoch"):  # step/* against the global step, epoch/* against the epoch
                    run.define_metric(f"{axis}_index")
                    run.define_metric(f"{axis}/*", step_metric=f"{axis}_index")
                tqdm.write(f"W&B logging {attempt}" + (f": {run.dir}" if attempt == "offline" else f": {run.url}"))
                return run
            except Exception as e:  # noqa: BLE001 - e.g. no network: fall back to offline, then give up
                tqdm.write(f"W&B {attempt} start failed ({type(e).__name__}: {e})")
        tqdm.write("W&B logging off")
        return None

    def log(self, scalars: dict[str, float], step: int, prefix: str = "") -> None:
        if self.tb is not None:
            try:
                for k, v in scalars.items():
                    self.tb.add_scalar(f"{prefix}{k}", v, step)
            except Exception as e:  # noqa: BLE001
                tqdm.write(f"TensorBoard logging off: {type(e).__name__}: {e}")
                self.tb = None
        if self.wandb is not None:
            try:
                payload = {f"{prefix}{k}": v for k, v in scalars.items()}
                if prefix.endswith("/"):
                    payload[f"{prefix[:-1]}_index"] = step
                self.wandb.log(payload)
            except Exception as e:  # noqa: BLE001
                tqdm.write(f"W&B logging off: {type(e).__name__}: {e}")
                self.wandb = None

    def summary(self, values: dict[str, float]) -> None:
        """Final figures (test metrics) as the W&B run summary."""
        if self.wandb is not None:
            try:
                self.wandb.summary.update(values)
            except Exception as e:  # noqa: BLE001
                tqdm.write(f"W&B summary not written: {type(e).__name__}: {e}")

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:  # noqa: BLE001
                tqdm.write(f"W&B finish failed: {type(e).__name__}: {e}")
            self.wandb = None

"""Where training runs: device, mixed precision, channels_last and torchrun DDP.

One ``Runtime`` is made per ``train()`` call from three TrainConfig fields:
    device         "auto" (CUDA when present, else CPU), "cpu" or "cuda"
    amp            "auto" (bf16 autocast on a CUDA GPU that supports it), "bf16" or "off"
    channels_last  "auto" (on for CUDA), "on" or "off": conv weights in NHWC (frames arrive NHWC already)

AMP uses bfloat16 only: it has float32's range, so the in-graph log-mel (log(mel + 1e-6)) and the
losses need no GradScaler. fp16 would underflow there; a GPU without bf16 trains in float32.

DDP: under ``torchrun --nproc_per_node N`` (RANK / WORLD_SIZE / LOCAL_RANK set; N = 1 too) the process group
is started with NCCL on CUDA and gloo on CPU, each process takes 1/N of every epoch's windows
(DistributedSampler) with ``batch_size`` windows per step, gradients are averaged by DDP, and rank 0
alone validates, writes checkpoints, logs and plots; its validation score is broadcast so every rank
takes the same early-stopping decision.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

DEVICES = ("auto", "cpu", "cuda")  # TrainConfig.device / --device
AMP_MODES = ("auto", "bf16", "off")  # TrainConfig.amp / --amp
CHANNELS_LAST_MODES = ("auto", "on", "off")  # TrainConfig.channels_last / --channels_last


@dataclass
class Runtime:
    device: torch.device  # where the model and batches live
    amp_dtype: torch.dtype | None  # autocast dtype (torch.bfloat16) or None for float32
    channels_last: bool  # conv weights in NHWC memory format
    rank: int = 0  # this process's rank under torchrun (0 without it)
    world_size: int = 1  # number of processes
    local_rank: int = 0  # GPU index on this node
    owns_group: bool = False  # this Runtime started the process group (and ends it in shutdown)
    distributed: bool = False  # launched by torchrun (even with one process): DDP-wrapped, collectives on

    @property
    def is_main(self) -> bool:
        """The process that validates, writes checkpoints, logs and prints."""
        return self.rank == 0

    def autocast(self):
        """Context for the forward pass and losses: bf16 autocast, or nothing."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: dict) -> dict:
        """Move a collated batch's tensors to the device. Frames arrive as [B, F, H, W, 3] (NHWC), so
        the encoders' permute to [B*F, 3, H, W] is already channels_last in memory."""
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device (and NHWC); returns the module to train (DDP-wrapped when distributed)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.type == "cuda" else None
        # modality dropout and optional heads leave some parameters without a gradient in a step
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def broadcast_float(self, value: float) -> float:
        """Rank 0's value on every rank (identity without DDP)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.broadcast(t, src=0)
        return float(t.item())

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum of each value over the ranks (identity without DDP)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t)
        return t.tolist()

    def weights_spread(self, model: nn.Module) -> float:
        """Largest difference between the ranks' weight checksums (0.0 when DDP kept them in sync)."""
        if not self.distributed:
            return 0.0
        with torch.no_grad():
            checksum = sum(float(p.double().sum()) for p in model.parameters())
        t = torch.tensor([checksum, -checksum], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # [max, -min]
        return float(t[0] + t[1])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def describe(self) -> str:
        amp = "bf16 autocast" if self.amp_dtype is not None else "float32"
        ddp = f", DDP rank {self.rank}/{self.world_size} ({dist.get_backend()})" if self.distributed else ""
        return f"device {self.device}, {amp}, channels_last {'on' if self.channels_last else 'off'}{ddp}"


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def make_runtime(device: str = "auto", amp: str = "auto", channels_last: str = "auto") -> Runtime:
    """Build the Runtime. Under torchrun (RANK and WORLD_SIZE set, even with a single process) it is
    distributed and starts the process group (NCCL on CUDA, gloo on CPU) unless one exists already."""
    device = _choice(device, "device", DEVICES)
    amp = _choice(amp, "amp", AMP_MODES)
    channels_last = _choice(channels_last, "channels_last", CHANNELS_LAST_MODES)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # set by torchrun
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but PyTorch sees no CUDA GPU (use --device auto or cpu)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local_rank = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    owns_group = launched and not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    bf16_ok = use_cuda and torch.cuda.is_bf16_supported()
    if amp == "bf16" and not bf16_ok:
        raise SystemExit("--amp bf16 needs a CUDA GPU with bfloat16 support (use --amp auto or off)")
    amp_dtype = torch.bfloat16 if (amp == "bf16" or (amp == "auto" and bf16_ok)) else None
    nhwc = channels_last == "on" or (channels_last == "auto" and use_cuda)
    return Runtime(dev, amp_dtype, nhwc, rank, world_size, local_rank, owns_group, launched)


def shutdown(rt: Runtime) -> None:
    """End the process group this module started (no-op otherwise)."""
    if rt.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

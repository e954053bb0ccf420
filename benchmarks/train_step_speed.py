"""Training-step speed under float32 / bf16 autocast and NCHW / channels_last, measured in one run.

    python benchmarks/train_step_speed.py [--fusion gated] [--batch-size 32] [--steps 30] [--json]

Times forward + loss + backward + AdamW step of ``build_model`` on random windows of the serving
geometry that already live on the device (so the data pipeline is not measured), after warm-up
steps, with CUDA synchronisation. Prints steps/s and windows/s per setting and the speed-up against
float32 + NCHW measured in the same run. On CPU only float32 settings run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from avemo.contract.geometry import DEFAULT_GEOMETRY
from avemo.training.losses.total import LossWeights, combine, loss_terms
from avemo.training.models.config import FUSIONS, ModelConfig
from avemo.training.models.model import build_model
from avemo.training.train.runtime import make_runtime


def time_steps(
    fusion: str, device: str, amp: str, channels_last: str, batch_size: int, steps: int, warmup: int, resnet: bool
) -> dict:
    torch.manual_seed(0)
    rt = make_runtime(device, amp, channels_last)
    enc = "resnet18" if resnet else "cnn"
    cfg = ModelConfig(fusion=fusion, audio_encoder=enc, video_encoder=enc, video_pretrained="none")
    model = build_model(cfg, DEFAULT_GEOMETRY)
    net = rt.prepare_model(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = DEFAULT_GEOMETRY
    batch = rt.to_device(
        {
            "audio": torch.randn(batch_size, g.window_samples) * 0.1,  # [B, S]
            "frames": torch.randint(
                0, 256, (batch_size, g.frames_per_window, g.face_size, g.face_size, 3), dtype=torch.uint8
            ),
            "mask": torch.ones(batch_size, 2),  # [B, 2]
            "label": torch.randint(0, cfg.num_classes, (batch_size,)),
        }
    )
    lw = LossWeights()

    def step() -> None:
        with rt.autocast():
            out = net(batch["audio"], batch["frames"], batch["mask"])
            terms, extra = loss_terms(out, batch["label"], lw, None, None)
        loss, _ = combine(terms, {}, extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if rt.device.type == "cuda" else float("nan")
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return {
        "fusion": fusion,
        "device": str(rt.device),
        "amp": "bf16" if rt.amp_dtype else "off",
        "channels_last": rt.channels_last,
        "steps_per_s": steps / seconds,
        "windows_per_s": steps * batch_size / seconds,
        "peak_mem_mib": peak,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fusion", choices=FUSIONS, default="gated", help="(default: %(default)s)")
    p.add_argument("--resnet", action="store_true", help="ResNet18 audio and video encoders instead of the light CNNs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per setting (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    settings = [("off", "off"), ("off", "on"), ("bf16", "off"), ("bf16", "on")] if cuda else [("off", "off")]
    rows = [
        time_steps(
            args.fusion, "cuda" if cuda else "cpu", amp, cl, args.batch_size, args.steps, args.warmup, args.resnet
        )
        for amp, cl in settings
    ]
    base = rows[0]["steps_per_s"]
    for r in rows:
        r["speedup_vs_fp32_nchw"] = r["steps_per_s"] / base
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{args.fusion}{' (ResNet18 encoders)' if args.resnet else ''}, batch {args.batch_size}, {name}")
    print(f"{'amp':>5s} {'channels_last':>13s} {'steps/s':>8s} {'windows/s':>10s} {'peak MiB':>9s} {'speed-up':>8s}")
    for r in rows:
        print(
            f"{r['amp']:>5s} {str(r['channels_last']):>13s} {r['steps_per_s']:8.2f} {r['windows_per_s']:10.1f} "
            f"{r['peak_mem_mib']:9.0f} {r['speedup_vs_fp32_nchw']:8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The serving contract: one table of tensor names, dtypes and dims.

config.pbtxt and the ONNX export are generated from this table; the client reads the served
config rather than keeping its own copy of window numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avemo.contract.geometry import WindowGeometry


@dataclass(frozen=True)
class TensorSpec:
    name: str  # tensor name in the ONNX graph, config.pbtxt and gRPC requests
    dtype: str  # Triton dtype name, e.g. "FP32", "UINT8"
    dims: tuple[int | str, ...]  # dims WITHOUT the batch dim; symbolic names resolved by ``resolve_dims``
    meaning: str


AUDIO = "audio"
FRAMES = "frames"
MODALITY_MASK = "modality_mask"
PROBS = "probs"
MODALITY_WEIGHTS = "modality_weights"

INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(AUDIO, "FP32", ("S",), "mono PCM at 16 kHz, S = window samples"),
    TensorSpec(FRAMES, "UINT8", ("F", "H", "W", 3), "RGB face crops, F = frames per window"),
    TensorSpec(MODALITY_MASK, "FP32", (2,), "1 = modality present (audio, video); a missing one is zeros + 0"),
)
OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(PROBS, "FP32", ("C",), "class probabilities; labels.txt via label_filename"),
    TensorSpec(MODALITY_WEIGHTS, "FP32", (2,), "how much audio / video drove this prediction"),
)

# Audio is PCM: it belongs in [-1, 1]. The exported graph clips it to [-AUDIO_CLIP, AUDIO_CLIP] (resampler
# overshoot is harmless); the Python backend refuses a window with |sample| > AUDIO_REFUSE_ABOVE (INVALID_ARG
# naming this range): such a window is not audio (int16 counts sent as float, or garbage), and answering it
# would be a confident guess about nothing.
AUDIO_CLIP = 1.0
AUDIO_REFUSE_ABOVE = 4.0

TRITON_PBTXT_DTYPES = {"FP32": "TYPE_FP32", "UINT8": "TYPE_UINT8", "INT64": "TYPE_INT64"}
NUMPY_DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype(np.float32),
    "UINT8": np.dtype(np.uint8),
    "INT64": np.dtype(np.int64),
}


def resolve_dims(spec: TensorSpec, geometry: WindowGeometry, num_classes: int) -> tuple[int, ...]:
    """Concrete dims (without batch) of a contract tensor for a geometry and class count."""
    sizes = {
        "S": geometry.window_samples,
        "F": geometry.frames_per_window,
        "H": geometry.face_size,
        "W": geometry.face_size,
        "C": num_classes,
    }
    return tuple(sizes[d] if isinstance(d, str) else int(d) for d in spec.dims)

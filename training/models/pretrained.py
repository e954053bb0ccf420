"""Pretrained encoders: self-supervised speech transformers and the ImageNet ResNet18, and their weights.

Speech encoders come from Hugging Face ``transformers`` (pinned in the ``pretrained`` extra): it installs beside
the project's torch pin, holds all three models, and ``from_pretrained`` downloads through the hub's own cache
(``$HF_HOME/hub``, ``$HF_HUB_CACHE``). torchaudio's pipelines were the other candidate; its newest release
(2.11) is built against torch 2.11, not the pinned 2.14, and the library is in maintenance.

    SPEECH_ENCODERS   name -> hub id, transformers classes, licence
    SpeechEncoder     audio [B, S] 16 kHz PCM -> frames [B, 768, T] (T = 99 for 2 s) -> embedding [B, D]
    load_pretrained   puts downloaded or local weights into a freshly built model (training start only: a
                      checkpoint holds every weight, so export and evaluation never download)

Weight sources: ``default`` (speech) / ``imagenet`` (video) = the library's download and cache; ``none`` = the
same architecture with random weights (the tests); a PATH = a local file for offline machines (a state dict
saved with ``torch.save`` or safetensors, or a folder written by ``save_pretrained`` / ``huggingface-cli
download``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from avemo.training.models.config import AUDIO_ENCODERS, SPEECH_ENCODER_NAMES, VIDEO_ENCODERS
from avemo.training.models.encoders import SequenceEncoder, mean_max


@dataclass(frozen=True)
class SpeechSpec:
    hub_id: str  # Hugging Face model id of the pretrained weights
    family: str  # transformers model family: wav2vec2 | hubert | wavlm
    licence: str  # licence of the weights, for the docs and the training log


SPEECH_ENCODERS = {
    "wav2vec2_base": SpeechSpec("facebook/wav2vec2-base", "wav2vec2", "Apache-2.0"),
    "hubert_base": SpeechSpec("facebook/hubert-base-ls960", "hubert", "Apache-2.0"),
    "wavlm_base_plus": SpeechSpec("microsoft/wavlm-base-plus", "wavlm", "MIT (see the model card)"),
}
assert tuple(SPEECH_ENCODERS) == SPEECH_ENCODER_NAMES
AUDIO_SOURCES = ("default", "none")  # --audio_pretrained, besides a PATH
VIDEO_SOURCES = ("imagenet", "none")  # --video_pretrained, besides a PATH
SPEECH_LAYERS = 12  # transformer layers of every *_base speech encoder
SPEECH_DIM = 768  # their hidden size
NORM_EPS = 1e-7  # per-window waveform normalisation: (x - mean) / sqrt(var + NORM_EPS)
IMAGENET_LICENCE = "BSD-3-Clause (torchvision code); ImageNet weights are for non-commercial research use"


class PretrainedWeightsUnavailable(RuntimeError):
    """Weights that could not be downloaded or read; the message says what was needed and where it looked."""


def _transformers_family(family: str):
    """(config class, model class) of a transformers family; imported here so the light models never need it."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - the pretrained extra is in `all`
        raise PretrainedWeightsUnavailable(
            "speech encoders need Hugging Face transformers: pip install -e '.[pretrained]'"
        ) from e
    classes = {
        "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
        "hubert": ("HubertConfig", "HubertModel"),
        "wavlm": ("WavLMConfig", "WavLMModel"),
    }[family]
    return getattr(transformers, classes[0]), getattr(transformers, classes[1])


def speech_config_overrides(layers: int) -> dict:
    """What differs from the base checkpoints' configs: the first ``layers`` transformer layers only, and no
    in-model masking or layer drop (our own augmentation and a fixed graph; layer drop would leave parameters
    without gradients under DDP)."""
    return {
        "num_hidden_layers": layers,
        "mask_time_prob": 0.0,
        "mask_feature_prob": 0.0,
        "layerdrop": 0.0,
        "apply_spec_augment": False,
    }


def build_speech_model(name: str, layers: int) -> nn.Module:
    """The transformers model of ``name`` with random weights (the base architecture, first ``layers`` layers):
    what every checkpoint is rebuilt into."""
    config_cls, model_cls = _transformers_family(SPEECH_ENCODERS[name].family)
    return model_cls(config_cls(**speech_config_overrides(layers)))


class SpeechEncoder(SequenceEncoder):
    """audio [B, S] float32 16 kHz PCM -> embedding [B, D] through a self-supervised speech transformer.

    Each window is normalised to zero mean and unit variance (what the models' feature extractors do; the
    convolutional front end's GroupNorm makes the base models nearly insensitive to it), then
    ``features`` = the last kept layer's hidden states [B, 768, T] (one frame per 20 ms: T = 99 for 2 s),
    ``pooled`` = mean and max over time [B, 1536], ``proj`` -> [B, D]. Tokens of ``forward_with_sequence``:
    the hidden states projected, [B, T, sequence_dim]. The model resamples nothing: 16 kHz is the contract's rate.
    """

    def __init__(self, name: str, layers: int, embed_dim: int, sequence_dim: int = 0):
        super().__init__()
        if name not in SPEECH_ENCODERS:
            raise ValueError(f"unknown speech encoder {name!r}; expected one of {sorted(SPEECH_ENCODERS)}")
        if not 1 <= layers <= SPEECH_LAYERS:
            raise ValueError(f"--audio_layers must be 1..{SPEECH_LAYERS} (0 = all), got {layers}")
        self.name, self.layers = name, layers
        self.speech = build_speech_model(name, layers)
        self.proj = nn.Linear(2 * SPEECH_DIM, embed_dim)
        self.seq_proj = nn.Linear(SPEECH_DIM, sequence_dim) if sequence_dim > 0 else None

    def trunk(self) -> nn.Module:
        """The pretrained part (what --freeze_encoders freezes and --encoder_lr trains)."""
        return self.speech

    def front_end(self) -> nn.Module:
        """The convolutional feature extractor (frozen unless --train_speech_frontend)."""
        front = self.speech.feature_extractor
        assert isinstance(front, nn.Module)
        return front

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio - audio.mean(dim=1, keepdim=True)  # [B, S]
        x = x / torch.sqrt(x.pow(2).mean(dim=1, keepdim=True) + NORM_EPS)
        hidden = self.speech(x, return_dict=False)[0]  # [B, T, 768]
        return hidden.transpose(1, 2)  # [B, 768, T]

    pooled = staticmethod(mean_max)  # [B, 1536]


# ---------------------------------------------------------------- loading weights
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file (tensors only) or a ``.safetensors`` file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsUnavailable(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return state


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str, ignore: tuple[str, ...] = ()) -> int:
    """Copy ``state`` into ``module``: every parameter of the module must be there with its shape (keys of a
    larger model, such as later transformer layers or a classifier, are ignored); returns tensors loaded."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(ignore)]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if k in state and
             state[k].shape != v.shape]  # fmt: skip
    if missing or wrong:
        detail = (f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} " if missing else "") + (
            f"wrong shapes {wrong[:5]}" if wrong else ""
        )
        raise PretrainedWeightsUnavailable(f"{source} does not fit the {type(module).__name__} architecture: {detail}")
    module.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    return sum(1 for k in own if k in state)


def _strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keys of a task model (``wav2vec2.encoder...``, ``module.``) as the bare model names them."""
    out = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p) :]
                break
        out[k] = v
    return out


def load_speech_weights(encoder: SpeechEncoder, source: str) -> str:
    """Weights for a speech encoder: ``default`` = ``from_pretrained(hub id)`` through the hub cache, or a local
    folder (``save_pretrained`` layout) or state-dict file. Returns a line describing what was loaded."""
    spec = SPEECH_ENCODERS[encoder.name]
    path = Path(source)
    if source != "default" and path.is_file():
        state = _strip_prefix(read_state_dict(path), ("module.", f"{spec.family}.", "speech."))
        n = _load_into(encoder.speech, state, str(path))
        return f"{encoder.name}: {n} tensors from {path}"
    if source != "default" and not path.is_dir():
        raise PretrainedWeightsUnavailable(
            f"--audio_pretrained {source}: no such file or folder (expected default, none, a state dict file or "
            f"a folder holding config.json and the weights of {spec.hub_id})"
        )
    _, model_cls = _transformers_family(spec.family)
    where = str(path) if source != "default" else spec.hub_id
    try:
        loaded = model_cls.from_pretrained(where, **speech_config_overrides(encoder.layers))
    except (OSError, ValueError) as e:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise PretrainedWeightsUnavailable(
            f"could not load the {encoder.name} weights ({where}): {str(e).splitlines()[0]}\n"
            f"  needed: the hub model {spec.hub_id} (https://huggingface.co/{spec.hub_id})\n"
            f"  looked in the hub cache {HF_HUB_CACHE} (set by HF_HOME / HF_HUB_CACHE)\n"
            f"  offline: on a machine with network run `hf download {spec.hub_id} --local-dir DIR`, copy DIR here and "
            f"pass --audio_pretrained DIR (or a state dict file); --audio_pretrained none trains from random weights"
        ) from e
    n = _load_into(encoder.speech, loaded.state_dict(), where)
    return f"{encoder.name}: {n} tensors from {where} (first {encoder.layers} layers)"


def load_resnet18_weights(net: nn.Module, source: str) -> str:
    """ImageNet weights for a torchvision ResNet18 trunk (``fc`` removed): ``imagenet`` = torchvision's
    ``ResNet18_Weights.DEFAULT`` through torch.hub's cache, or a local state-dict file."""
    from torchvision.models import ResNet18_Weights

    if source == "imagenet":
        weights = ResNet18_Weights.DEFAULT
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # urllib / OSError / hash mismatch: all mean "not here"
            raise PretrainedWeightsUnavailable(
                f"could not load the ImageNet ResNet18 weights: {(str(e) or type(e).__name__).splitlines()[0]}\n"
                f"  needed: {weights.url}\n"
                f"  looked in torch.hub's cache {cache} (set by TORCH_HOME)\n"
                f"  offline: download that file elsewhere, put it in that folder unchanged, or pass "
                f"--video_pretrained FILE; --video_pretrained none trains from random weights"
            ) from e
        where = f"torchvision {weights} ({cache / Path(weights.url).name})"
    else:
        path = Path(source)
        if not path.is_file():
            raise PretrainedWeightsUnavailable(
                f"--video_pretrained {source}: no such file (expected imagenet, none or a state dict of "
                "torchvision's resnet18)"
            )
        state, where = _strip_prefix(read_state_dict(path), ("module.", "net.")), str(path)
    n = _load_into(net, state, where, ignore=("fc.",))
    return f"resnet18: {n} tensors from {where}"


def load_pretrained(model: nn.Module, cfg) -> list[str]:
    """Put each encoder's pretrained weights (``cfg.audio_pretrained`` / ``cfg.video_pretrained``) into a fresh
    model; returns one line per encoder loaded (nothing for ``none`` or encoders without pretrained weights)."""
    encoders = getattr(model, "encoders", {})
    lines = []
    audio = encoders["audio"] if "audio" in encoders else None
    video = encoders["video"] if "video" in encoders else None
    if isinstance(audio, SpeechEncoder) and cfg.audio_pretrained != "none":
        lines.append(load_speech_weights(audio, cfg.audio_pretrained))
    if video is not None and cfg.video_encoder == "resnet18" and cfg.video_pretrained != "none":
        lines.append(load_resnet18_weights(video.net, cfg.video_pretrained))
    return lines


def check_sources(cfg) -> None:
    """Refuse weight sources that cannot apply: a PATH for an encoder with no pretrained weights, or
    ``--audio_layers`` without a speech encoder."""
    if cfg.audio_encoder not in AUDIO_ENCODERS:
        raise ValueError(f"--audio_encoder must be one of {', '.join(AUDIO_ENCODERS)}, got {cfg.audio_encoder!r}")
    if cfg.video_encoder not in VIDEO_ENCODERS:
        raise ValueError(f"--video_encoder must be one of {', '.join(VIDEO_ENCODERS)}, got {cfg.video_encoder!r}")
    if cfg.audio_encoder not in SPEECH_ENCODERS and cfg.audio_pretrained not in AUDIO_SOURCES:
        raise ValueError(
            f"--audio_pretrained {cfg.audio_pretrained}: the {cfg.audio_encoder} audio encoder has no pretrained "
            f"weights (speech encoders: {', '.join(SPEECH_ENCODERS)})"
        )
    if cfg.video_encoder != "resnet18" and cfg.video_pretrained not in VIDEO_SOURCES:
        raise ValueError(f"--video_pretrained {cfg.video_pretrained}: the {cfg.video_encoder} video encoder has none")
    if cfg.audio_layers and cfg.audio_encoder not in SPEECH_ENCODERS:
        raise ValueError(f"--audio_layers applies to the speech encoders ({', '.join(SPEECH_ENCODERS)})")


def pretrained_trunks(model: nn.Module) -> dict[str, nn.Module]:
    """modality -> the encoder part that pretrained weights fill (a speech transformer, a video ResNet18): what
    --freeze_encoders freezes and --encoder_lr trains. Light CNNs and the log-mel ResNet have none."""
    out = {}
    for name, enc in getattr(model, "encoders", {}).items():
        if isinstance(enc, SpeechEncoder):
            out[name] = enc.speech
        elif type(enc).__name__ == "VideoResNet":
            out[name] = enc.net
    return out

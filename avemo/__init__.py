"""avemo: audio-video emotion recognition, from training to a live Triton demo."""

__version__ = "0.1.0"

"""RAVDESS label maps: the 8 emotion classes and the documented 4-class mapping.

RAVDESS file names are ``MM-VC-EE-II-SS-RR-AA.ext`` (modality, vocal channel, emotion, intensity,
statement, repetition, actor). The emotion field EE is 01..08 in the order of ``EMOTIONS_8``.
"""

from __future__ import annotations

EMOTIONS_8: tuple[str, ...] = (
    "neutral",  # 01
    "calm",  # 02
    "happy",  # 03
    "sad",  # 04
    "angry",  # 05
    "fearful",  # 06
    "disgust",  # 07
    "surprised",  # 08
)

# 4-class mapping (documented in docs/data.md): low-arousal neutral/calm, positive happy/surprised,
# negative-passive sad/fearful, negative-active angry/disgust.
EMOTIONS_4: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
MAP_8_TO_4: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "happy",
    "surprised": "happy",
    "sad": "sad",
    "fearful": "sad",
    "angry": "angry",
    "disgust": "angry",
}


def label_names(num_classes: int) -> tuple[str, ...]:
    """Class names for an 8- or 4-class task."""
    if num_classes == 8:
        return EMOTIONS_8
    if num_classes == 4:
        return EMOTIONS_4
    raise ValueError(f"num_classes must be 4 or 8, got {num_classes}")


def label_index(emotion: str, num_classes: int) -> int:
    """Index of an 8-class emotion name in the 8- or 4-class label list."""
    if num_classes == 4:
        emotion = MAP_8_TO_4[emotion]
    return label_names(num_classes).index(emotion)

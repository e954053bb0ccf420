"""Progress bars that suit both a terminal and a log file.

``progress(...)`` is ``tqdm(...)`` on a terminal. When the bar's stream (stderr unless ``file=``) is
not a TTY -- output redirected to a log, a CI job -- the bar is redrawn at most every
``LOG_INTERVAL`` seconds, in ASCII, each redraw as one plain line (no ``\\r``), instead of a flood of
carriage-return updates.

    for clip in progress(clips, desc="decode", unit="clip", disable=not show):
        ...
    bar = progress(total=n, desc="corpus", unit="clip")
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between two progress lines in a log


class _Lines:
    """A file for tqdm that turns every redraw into one line and drops cursor movements."""

    def __init__(self, file) -> None:
        self.file = file
        self.last = ""

    def write(self, s: str) -> None:
        text = str(s).replace("\r", "").replace("\x1b[A", "").strip()
        if text and text != self.last:  # closing redraws the last state once more
            self.file.write(text + "\n")
            self.file.flush()
            self.last = text

    def flush(self) -> None:
        self.file.flush()


def _is_tty(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class _LogBar(tqdm):
    """A tqdm whose ``set_postfix`` / ``set_description`` wait for the next timed redraw (a forced
    redraw per call would print one line per training step in a log)."""

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc=None, refresh=False):
        super().set_description(desc, refresh=False)


def progress(iterable=None, **tqdm_kwargs) -> tqdm:
    """``tqdm(iterable, **tqdm_kwargs)``; in a log (not a TTY) one line every ``LOG_INTERVAL`` s at most.

    Every tqdm argument works as usual (``disable=``, ``total=``, ``desc=``, ``leave=`` ...); in a log,
    ``mininterval`` / ``maxinterval`` default to ``LOG_INTERVAL`` and ``ascii`` to True.
    """
    file = tqdm_kwargs.get("file") or sys.stderr
    if not _is_tty(file):
        tqdm_kwargs["file"] = _Lines(file)
        tqdm_kwargs.setdefault("mininterval", LOG_INTERVAL)
        tqdm_kwargs.setdefault("maxinterval", max(LOG_INTERVAL, tqdm_kwargs["mininterval"]))
        tqdm_kwargs.setdefault("ascii", True)
        return _LogBar(iterable, **tqdm_kwargs)
    return tqdm(iterable, **tqdm_kwargs)

"""Progress bars redraw on a terminal and print a line only now and then in a log."""

from __future__ import annotations

import io

from avemo.contract.progress import progress


def test_log_bar_prints_a_few_plain_lines_not_one_per_step():
    log = io.StringIO()  # not a TTY, like a redirected stderr
    bar = progress(range(500), file=log, desc="epoch")
    for i in bar:
        bar.set_postfix(loss=f"{i:.3f}")  # a forced redraw per step would print 500 lines
        bar.set_description(f"epoch {i}")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3, lines
    assert "500/500" in lines[-1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_redraws_in_place():
    term = _Terminal()
    bar = progress(range(3), file=term, desc="decode", mininterval=0)
    for _ in bar:
        pass
    bar.close()
    assert "\r" in term.getvalue() and "3/3" in term.getvalue()

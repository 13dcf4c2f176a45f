"""Text on its way to a person's terminal: what a job, a producer or a worker wrote is shown,
never obeyed."""

from __future__ import annotations

import re

# Every control character but newline and tab: C0, DEL and C1. ESC starts the sequences
# that write the clipboard (OSC 52), make links (OSC 8), retitle the window (OSC 0),
# load fonts or keys (DCS) and move the cursor or recolour (CSI); 0x9b and 0x90 start
# CSI and DCS alone on terminals that read C1; \r makes a line overwrite itself.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """`text` with every control character but newline and tab shown as an escape (`\\x1b`,
    `\\r`): printed as characters, never obeyed by the terminal."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\r" if char == "\r" else f"\\x{ord(char):02x}"

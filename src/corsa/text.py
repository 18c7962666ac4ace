"""What is printed: plain-text tables, metrics as text, and text made safe for a terminal."""

from __future__ import annotations

import unicodedata


def printable(text, keep_newlines: bool = False) -> str:
    """`text` with control characters (ANSI escapes, carriage returns, bells …) shown as escapes.

    Edit files are untrusted: an id or an answer holding "\\x1b[2J" must not clear the user's
    terminal or forge what it shows.
    """
    out = []
    for c in str(text):
        if c == "\n" and keep_newlines:
            out.append(c)
        elif unicodedata.category(c) in ("Cc", "Cf") and c != " ":
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(c)
    return "".join(out)


def show_table(rows: list[list[str]], header: list[str], numbers: bool = False) -> str:
    """A plain-text table under a ruled header; with `numbers`, every column but the first aligned right."""
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(r):
        cells = zip(r, widths)
        return "  ".join(str(c).rjust(w) if numbers and i else str(c).ljust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fmt_metric(value, key: str) -> str:
    """A metric as printed: margins in nats with a sign, fractions in %."""
    if value is None:
        return "–"
    return f"{value:+.3f}" if "margin" in key else f"{100 * value:.1f}%"

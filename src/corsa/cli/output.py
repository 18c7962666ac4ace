"""What the commands print: plain-text tables."""

from __future__ import annotations


def show_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fmt_metric(value, key: str) -> str:
    """A metric as printed: margins in nats with a sign, fractions in %."""
    if value is None:
        return "–"
    return f"{value:+.3f}" if "margin" in key else f"{100 * value:.1f}%"

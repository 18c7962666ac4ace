"""What a run ran on: the library versions saved beside every result, and the process's peak memory."""

from __future__ import annotations

import platform
import sys


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def library_versions() -> dict:
    """Versions of Python and of every library whose behaviour the results depend on."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("corsa-edit", "torch", "transformers", "peft", "accelerate", "safetensors", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions

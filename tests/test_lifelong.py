"""The lifelong row and its switches as a whole: per-edit stopping, the end-of-turn token, the
release preset, the command line's flags and refusals, and what `corsa edit` shows.

Each mechanism has its own file: test_negatives.py, test_replay.py, test_preserve.py.
"""

import json

import pytest

from corsa import Editor
from corsa.config import EditConfig
from corsa.prompts import PromptFormat
from corsa.records import Edit


def test_edit_stop_takes_held_edits_out_of_the_batches(tiny):
    edits = [Edit(f"e{i}", f"The code of item {i} is", "QQ", "AB") for i in range(4)]
    editor = Editor(tiny, method="lora", epochs=60, batch_size=4, lr=3e-2, warmup_steps=5, margin_target=0.5,
                    template="raw", progress=False)
    record = editor.update(edits)
    checks = [h for h in record.result.history if "edit_stop/holding" in h]
    steps = [h for h in record.result.history if "time/step_s" in h]
    assert record.result.stopped_early and checks[-1]["edit_stop/holding"] == 4
    # once some edits hold, the steps train only the others
    partly = [c for c in checks if 0 < c["edit_stop/holding"] < 4]
    if partly:
        after = [s for s in steps if s["epoch"] == partly[0]["epoch"] + 1]
        assert after and all(s["edits"] == 4 - partly[0]["edit_stop/holding"] for s in after)
    assert all(a.startswith("QQ") for a in editor.ask([e.prompt for e in edits]))


def test_train_eos_off_leaves_the_end_of_turn_token_out():
    class Tok:
        chat_template = "x"
        eos_token_id = 9

        def __call__(self, text, add_special_tokens=False):
            return type("R", (), {"input_ids": [len(w) for w in text.split()]})()

    fmt = PromptFormat(Tok(), "chat")
    assert fmt.answer_ids("Rome now") == [4, 3, 9]
    assert fmt.answer_ids("Rome now", eos=False) == [4, 3]


def test_release_preset_is_the_authors_settings():
    cfg = EditConfig.preset("release", method="lora")
    assert (cfg.lr, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.edit_stop) == (2e-4, 8, 4, 10, False)
    with pytest.raises(Exception, match="unknown preset"):
        EditConfig.preset("paper")


def test_cli_flags_of_the_mechanisms_and_the_preset():
    from corsa.cli import build_parser, config_from_args

    args = build_parser().parse_args(["edit", "--edits", "x", "--out", "y", "--method", "corsa", "--no-train-eos",
                                      "--negatives", "interference,online", "--replay", "lost",
                                      "--preset", "release", "--lr", "1e-3"])
    cfg = config_from_args(args)
    assert cfg.train_eos is False and cfg.negatives == ("interference", "online") and cfg.replay == "lost"
    assert cfg.lr == 1e-3 and cfg.grad_accum == 4 and cfg.edit_stop is False  # the flag beats the preset
    plain = config_from_args(build_parser().parse_args(["edit", "--edits", "x", "--out", "y"]))
    assert plain.value("train_eos") is True and plain.edit_stop is True


def test_options_that_would_do_nothing_are_refused():
    for kwargs, message in [(dict(swap_anchors=2), "preservation term, which is off"),
                            (dict(anchors="a.txt"), "preservation term, which is off"),
                            (dict(replay_budget=5), "replay, which is off"),
                            (dict(negatives="interference", reference="previous"), "reference base")]:
        with pytest.raises(Exception, match=message):
            EditConfig(method="corsa", **kwargs)
    assert EditConfig(method="corsa", negatives="online,interference", max_negatives=0).max_negatives == 0


def test_corsa_edit_shows_spillover_and_warns_when_few_edits_took(tmp_path, capsys):
    import json

    from corsa.cli import main
    from corsa.cli.edit import spillover_prompts
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    edits = tmp_path / "e.jsonl"
    edits.write_text(json.dumps({"prompt": "The capital of X is", "target_new": "Ybbb", "target_old": "Z"}) + "\n")
    # one step at a tiny lr: the edit does not take, and the adapter barely moves
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "weak"), "--epochs", "1",
                 "--lr", "1e-6", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "unrelated prompt" in captured.out and spillover_prompts()[0][:40] in captured.out
    assert "only 0 of 1 edits took" in captured.err and "corsa-lifelong" in captured.err
    assert "spill over" not in captured.err  # nothing changed
    # a strong update on the tiny model changes everything it answers: the warning says so
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "strong"), "--epochs", "30",
                 "--lr", "3e-2", "--batch-size", "1", "--quiet", "--scope", "all"]) == 0
    captured = capsys.readouterr()
    assert "CHANGED" in captured.out and "spill over" in captured.err and "--scope subject" in captured.err


def test_corsa_edit_shows_the_filled_old_answers_before_training(tmp_path, capsys):
    import json

    from corsa.cli import main
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    edits = tmp_path / "e.jsonl"
    edits.write_text(json.dumps({"prompt": "The capital of X is", "target_new": "Ybbb"}) + "\n"
                     + json.dumps({"prompt": "The river of X is", "target_new": "Q", "target_old": "Z"}) + "\n")
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--quiet", "--no-check"]) == 0
    out = capsys.readouterr().out
    stored = [json.loads(line) for line in (tmp_path / "run" / "edits.jsonl").read_text().splitlines()]
    # only the edit without y⁻ is listed, with the y⁻ it was trained with, before the training's report
    assert "old answer y⁻ of 1 edits" in out and out.index("old answer y⁻") < out.index("trained ")
    table = out[out.index("old answer y⁻"):out.index("trained ")]
    assert stored[0]["id"] in table and stored[1]["id"] not in table and stored[1]["target_old"] == "Z"
    assert stored[0]["target_old"] and " ".join(stored[0]["target_old"].split())[:40] in table


def test_corsa_edit_with_updates_shows_each_updates_filled_old_answers_before_it_trains(tmp_path, capsys):
    import json

    from corsa.cli import main
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    edits = tmp_path / "e.jsonl"
    edits.write_text("".join(json.dumps({"prompt": f"The capital of X{i} is", "target_new": f"Y{i}bb"}) + "\n"
                             for i in range(2)))
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--updates", "2", "--quiet", "--no-check"]) == 0
    out = capsys.readouterr().out
    for k in (1, 2):
        stored = json.loads((tmp_path / "run" / f"update-{k}" / "edits.jsonl").read_text())
        start = out.index(f"update {k}/2: 1 edits")
        trained = out.index(f"update {k}/2: ", start + 1)
        # the update's own table, between its announcement and its training's report, with the y⁻ it trained on
        table = out[start:trained]
        assert "old answer y⁻ of 1 edits" in table and stored["id"] in table
        assert " ".join(stored["target_old"].split())[:40] in table

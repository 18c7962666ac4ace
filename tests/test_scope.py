"""The adapter's scope (corsa.scope): who answers which prompt, and that out of scope is the base model exactly."""

import json
from contextlib import contextmanager

import pytest

from corsa import Editor
from corsa.config import EditConfig
from corsa.errors import ConfigError
from corsa.evaluate import evaluate
from corsa.metrics import contains, mentions_any
from corsa.records import Edit, Probe
from corsa.scope import Scope, key, routed
from corsa.testing import FAST



def _edits(n=4):
    return [Edit(id=f"e{i}", prompt=f"The capital of country {i} is", target_new=f"City{i}", target_old=f"Town{i}",
                 subject=f"country {i}", paraphrases=(f"Country {i} has its capital in",),
                 locality=(Probe(f"The colour of object {i} is", "red"),)) for i in range(n)]


# --- pure parts --------------------------------------------------------------------------------

def test_the_key_is_the_subject_when_the_prompt_names_it_else_the_prompt():
    assert key(Edit("a", "The mother tongue of Danielle Darrieux is", "English", subject="Danielle Darrieux")) \
        == "Danielle Darrieux"
    assert key(Edit("b", "What is 2+2?", "5")) == "What is 2+2?"                         # no subject
    assert key(Edit("c", "Who leads the party?", "Ann", subject="Labour")) == "Who leads the party?"  # not named


def test_scope_covers_prompts_naming_a_subject_as_whole_words():
    scope = Scope([Edit("a", "The mother tongue of Danielle Darrieux is", "English", subject="Danielle Darrieux"),
                   Edit("b", "Rome is the capital of", "Spain", subject="Rome"),
                   Edit("c", "What is 2+2?", "5")])
    assert scope.covers("Where DANIELLE   darrieux is from, people speak")  # case and spaces normalised
    assert not scope.covers("Michel Rocard is a native speaker of")        # a neighbour: another subject
    assert not scope.covers("Darrieux was an actress")                      # part of the subject is not it
    assert not scope.covers("Romeo loves")                                  # whole words: Rome is not in Romeo
    assert scope.covers("In Rome, people speak")
    assert scope.covers("what is 2+2")                                      # keyed by the prompt
    assert scope.by_prompt == 1 and scope.describe() == {"mode": "subject", "keys": 3, "edits_keyed_by_prompt": 1}
    assert not Scope([]).covers("anything")


def test_mentions_any_reads_targets_as_contains_does():
    targets = ["Rome", "C++", "1", "東京", "", None, "New York"]
    texts = ["Romeo", "rome.", "I like C++ a lot", "C+", "1995", "in 1 day", "東京都", "new  york city", "", "York"]
    test = mentions_any(targets)
    want = [any(contains(t, x) for x in targets) for t in texts]
    assert [test(t) for t in texts] == want == [False, True, True, False, False, True, True, True, False, False]
    assert mentions_any([None, ""])("anything") is False


class _Model:
    """Records whether the adapter was enabled when fn ran."""

    def __init__(self):
        self.enabled = True

    @contextmanager
    def disable_adapter(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True


def test_routed_keeps_order_and_disables_the_adapter_outside():
    model = _Model()
    scope = Scope([Edit("a", "Rome is in", "Spain", subject="Rome")])
    calls = []

    def fn(part, on):
        calls.append((list(part), on, model.enabled))
        return [f"{p}|{on}" for p in part]

    out = routed(model, scope, ["x", "Rome a", "y", "rome b"], fn)
    assert out == ["x|False", "Rome a|True", "y|False", "rome b|True"]
    assert calls == [(["Rome a", "rome b"], True, True), (["x", "y"], False, False)]
    calls.clear()
    assert routed(model, scope, ["x"], fn) == ["x|False"] and len(calls) == 1   # an empty part does not run
    assert routed(model, None, ["x", "Rome"], fn) == ["x|True", "Rome|True"]     # no scope: all with the adapter


# --- options ---------------------------------------------------------------------------------

def test_scope_option_defaults_and_refusals():
    assert EditConfig(method="corsa").value("scope") == "all"
    assert EditConfig(method="corsa-lifelong").value("scope") == "subject"
    assert EditConfig(method="lora", scope="subject").resolved()["resolved"]["scope"] == "subject"
    with pytest.raises(ConfigError, match="scope"):
        EditConfig(scope="nearby")


def test_cli_scope_flag():
    from corsa.cli import build_parser, config_from_args

    args = build_parser().parse_args(["edit", "--edits", "f.jsonl", "--out", "o", "--method", "lora",
                                      "--scope", "subject"])
    assert config_from_args(args).value("scope") == "subject"


# --- on the tiny model -------------------------------------------------------------------------

def test_out_of_scope_prompts_get_the_unedited_model_exactly(tmp_path):
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base")
    edits = _edits()
    editor = Editor(str(base), method="lora", scope="subject", **FAST)
    editor.update(edits, out=tmp_path / "run")
    scoped = evaluate(editor, edits)
    editor.config.scope = "all"                 # the same adapter answering everything
    everywhere = evaluate(editor, edits)
    unedited = evaluate(editor, edits, base=True)
    probes = lambda ev: [q for r in ev["records"] for q in r["locality"]]  # noqa: E731
    # the locality probes name no edited subject: scoped, they are the unedited model's, answers and margins
    assert [q["answer"] for q in probes(scoped)] == [q["answer"] for q in probes(unedited)]
    assert [q["margin"] for q in probes(scoped)] == pytest.approx([q["margin"] for q in probes(unedited)], abs=1e-5)
    assert scoped["metrics"]["generated/locality"] == 1.0
    assert [q["margin"] for q in probes(everywhere)] != pytest.approx([q["margin"] for q in probes(unedited)],
                                                                      abs=1e-3)
    # edit prompts and paraphrases name their subject: the adapter answers them as it does unscoped
    assert [r["answer"] for r in scoped["records"]] == [r["answer"] for r in everywhere["records"]]
    assert [r["margin"] for r in scoped["records"]] == pytest.approx([r["margin"] for r in everywhere["records"]],
                                                                     abs=1e-4)
    assert scoped["scope"] == {"mode": "subject", "keys": 4, "edits_keyed_by_prompt": 0, "asked_in_scope": 8,
                               "asked": 8, "probes_in_scope": 0, "probes": 4}
    assert everywhere["scope"] == {"mode": "all"}
    # ask() routes the same way
    editor.config.scope = "subject"
    probe = ["The colour of object 1 is"]
    assert editor.ask(probe) == editor.ask(probe, base=True)
    assert editor.ask([edits[1].prompt]) == [scoped["records"][1]["answer"]]


def test_the_scope_is_saved_with_the_adapter(tmp_path):
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base")
    Editor(str(base), method="lora", scope="subject", **FAST).update(_edits(2), out=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "adapter" / "corsa-adapter.json").read_text())["scope"] == "subject"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["scope"]["keys"] == 2
    # loaded without a scope option, the adapter keeps its own; an explicit option wins
    again = Editor(str(base), adapter=tmp_path / "run", method="lora", **FAST)
    assert again.scope_mode == "subject" and again.scope.keys == ["country 0", "country 1"]
    assert Editor(str(base), adapter=tmp_path / "run", method="lora", scope="all", **FAST).scope is None
    assert Editor(str(base), method="lora", **FAST).scope is None   # lora's own default: everything


def test_eval_uses_the_saved_scope_unless_told(tmp_path):
    from corsa.cli import main
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base")
    Editor(str(base), method="lora", scope="subject", **FAST).update(_edits(2), out=tmp_path / "run")
    data = tmp_path / "edits.jsonl"
    data.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in _edits(2)))
    common = ["eval", "--model", str(base), "--adapter", str(tmp_path / "run"), "--edits", str(data), "--quiet",
              "--max-new-tokens", "4", "--no-base"]
    assert main([*common, "--out", str(tmp_path / "saved.json")]) == 0
    assert main([*common, "--out", str(tmp_path / "all.json"), "--scope", "all"]) == 0
    saved, everywhere = (json.loads((tmp_path / n).read_text()) for n in ("saved.json", "all.json"))
    assert saved["scope"]["mode"] == "subject" and saved["scope"]["probes_in_scope"] == 0
    assert everywhere["scope"] == {"mode": "all"}

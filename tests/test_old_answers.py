"""The one y⁻ filler (corsa.old_answers): the unedited model's answer, in the form of an answer."""

from dataclasses import replace

import pytest

from corsa import Editor
from corsa.old_answers import MAX_WORDS, fill, short_answer

FAST = dict(epochs=2, batch_size=2, grad_accum=1, lr=1e-2, progress=False, edit_stop=False)


@pytest.mark.parametrize("prompt, answer, want", [
    # restated prompt, then the answer and more
    ("The official language of Majorca is", "The official language of Majorca is Italian.", "Italian"),
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower is located in the city of Paris, France.",
     "Paris"),
    ("December Bride premieres on", "December Bride premieres on December 21st, 20", "December 21st"),
    # a cloze continuation, cut at the first clause
    ("The native language of Catherine Rouvel is", "French. She was born", "French"),
    # a question: the model's reply restates its closing words
    ("What is the twin city of Lyon? It is", "The twin city of Lyon is Beirut; they", "Beirut"),
    # no restatement: the first clause, at most MAX_WORDS words
    ("Rambo Nunataks is in", "Antarctica, near the pole", "Antarctica"),
    ("Who wrote it?", "one two three four five six seven eight", "one two three four five six"),
    # numbers and abbreviations are not clause ends
    ("Pi is", "Pi is 3.14159, roughly.", "3.14159"),
    ("He was born in", "He was born in St. Louis, Missouri.", "St. Louis"),
    ("The population is", "1,234,567 people.", "1,234,567 people"),
    # only the restatement: nothing is left
    ("The original language of The Second Sex is", "The original language of The Second Sex is:\n\nThe", ""),
    ("anything", "", ""),
])
def test_short_answer(prompt, answer, want):
    assert short_answer(prompt, answer) == want
    assert len(short_answer(prompt, answer).split()) <= MAX_WORDS


def test_fill_uses_the_unedited_model_and_keeps_given_answers(tiny, toy_edits):
    editor = Editor(tiny, method="lora", **FAST)
    before = fill(editor.model, editor.fmt, [replace(e, target_old=None) for e in toy_edits[:2]])
    assert all(e.target_old for e in before)
    editor.update(toy_edits[:2])  # the adapter now changes the model's answers
    trained = [replace(e, target_old=None) for e in toy_edits[:2]]
    assert [e.target_old for e in editor.fill_old_targets(trained)] == [e.target_old for e in before]
    kept = editor.fill_old_targets(toy_edits[2:3])
    assert kept[0].target_old == toy_edits[2].target_old


def test_a_filled_old_answer_is_never_the_new_one(tiny, toy_edits, monkeypatch):
    import corsa.generate

    editor = Editor(tiny, method="lora", **FAST)
    edit = replace(toy_edits[0], target_old=None)
    said = {"text": f"{edit.target_new}."}  # the unedited model already gives y⁺
    monkeypatch.setattr(corsa.generate, "generate", lambda *a, **k: [said["text"]])
    assert fill(editor.model, editor.fmt, [edit])[0].target_old == editor.tokenizer.eos_token
    said["text"] = f"{edit.target_new}, surely"  # the short answer is y⁺, the whole line is not
    assert fill(editor.model, editor.fmt, [edit])[0].target_old == f"{edit.target_new}, surely"

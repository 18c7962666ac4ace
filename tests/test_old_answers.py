"""The one y⁻ filler (corsa.old_answers): the unedited model's answer, in the form of an answer."""

from dataclasses import replace

import pytest

from corsa import Editor
from corsa.old_answers import COMPLETION_WORDS, MAX_WORDS, completion_answer, fill, restates, short_answer

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


@pytest.mark.parametrize("completion, want", [
    ("Microsoft, and Microsoft is a part of it.", "Microsoft, and Microsoft is a part of it"),
    ("French.", "French"),
    ("a mix of various faiths, including Buddhism, Taoism and", "a mix of various faiths, including Buddhism, Taoism"),
    ("St. Louis. It is", "St. Louis"),
    ("3.14 or so! more", "3.14 or so"),
    ("\n", ""),
])
def test_completion_answer(completion, want):
    assert completion_answer(completion) == want
    assert len(completion_answer(completion).split()) <= COMPLETION_WORDS


def test_restates():
    assert restates("The official language of Majorca is", "The official language of Majorca is Italian.")
    assert not restates("Windows Embedded CE 6.0 is a product of",
                        "Windows Embedded CE 6.0 is a Microsoft product that has been designed")


def test_a_reply_that_does_not_restate_the_prompt_is_replaced_by_the_completion_of_the_prompt(tiny, monkeypatch):
    import corsa.generate
    from corsa.prompts import PromptFormat
    from corsa.records import Edit

    model, tok = tiny
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    fmt = PromptFormat(tok, "chat")
    edits = [Edit(id="a", prompt="Windows Embedded CE 6.0 is a product of", target_new="Apple"),
             Edit(id="b", prompt="The official language of Majorca is", target_new="English")]
    replies = {edits[0].prompt: "Windows Embedded CE 6.0 is a Microsoft product that has been designed",
               edits[1].prompt: "The official language of Majorca is Italian."}
    asked = []

    def generate(model, fmt, prompts, *a, prefill=False, **k):
        asked.append((tuple(prompts), prefill))
        return ["Microsoft. It is a company" if prefill else replies[p] for p in prompts]

    monkeypatch.setattr(corsa.generate, "generate", generate)
    filled = fill(model, fmt, edits)
    assert [e.target_old for e in filled] == ["Microsoft", "Italian"]
    # only the reply that restated nothing was completed again
    assert asked[1] == ((edits[0].prompt,), True)
    # the prefill puts the prompt's words at the start of the answer turn, after the template's header
    assert fmt.prefill_ids(edits[0].prompt) == tok(edits[0].prompt, add_special_tokens=False).input_ids
    assert PromptFormat(tok, "raw").prefill_ids(edits[0].prompt) == []

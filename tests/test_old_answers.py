"""The one y⁻ filler (corsa.old_answers): the unedited model's answer, in the form of an answer."""

from dataclasses import replace

import pytest

from corsa import Editor
from corsa.old_answers import (FUNCTION_WORDS, MAX_WORDS, SHOTS, answer_scores, candidates, end_ids, fill, short_answer,
                               spans)
from corsa.testing import FAST



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
    editor.update(toy_edits[:2])
    prompts = [e.prompt for e in toy_edits[:2]]
    assert editor.ask(prompts) != editor.ask(prompts, base=True)  # the adapter now changes the model's answers
    trained = [replace(e, target_old=None) for e in toy_edits[:2]]
    assert [e.target_old for e in editor.fill_old_targets(trained)] == [e.target_old for e in before]
    kept = editor.fill_old_targets(toy_edits[2:3])
    assert kept[0].target_old == toy_edits[2].target_old


def test_a_filled_old_answer_is_never_the_new_one(tiny, toy_edits, monkeypatch):
    import corsa.generate

    editor = Editor(tiny, method="lora", **FAST)
    edit = replace(toy_edits[0], target_old=None)
    said = {"text": f"{edit.target_new}."}  # the unedited model already gives y⁺
    monkeypatch.setattr(corsa.old_answers, "generate", lambda *a, **k: [said["text"]])
    assert fill(editor.model, editor.fmt, [edit])[0].target_old == editor.tokenizer.eos_token
    said["text"] = f"{edit.target_new}, surely"  # y⁺ is no candidate: the other span is y⁻
    assert fill(editor.model, editor.fmt, [edit])[0].target_old == "surely"


def test_spans_are_word_runs_inside_one_clause():
    assert spans("a blend of French", max_words=2) == ["a", "a blend", "blend", "blend of", "of", "of French", "French"]
    # clause boundaries cut, abbreviations and inner punctuation do not; the text is kept as written
    assert spans("St. Louis, Chaux-de-Fonds; F.C. Porto", max_words=4) == [
        "St", "St. Louis", "Louis", "Chaux-de-Fonds", "Chaux", "de", "Fonds", "F.C", "F.C. Porto", "Porto"]
    # a hyphenated word's parts follow it: an answer inside an adjective
    assert spans("the French-born poet", max_words=2) == [
        "the", "the French-born", "French-born", "French-born poet", "French", "born", "poet"]
    assert spans("one two three four five six")[-1] == "six"
    assert max(len(x.split()) for x in spans("one two three four five six")) == 4
    assert spans("") == [] and spans("...") == []


def test_candidates_come_after_the_restatement_and_never_are_y_plus():
    prompt = "The language of El Correo is"
    reply = "The language of El Correo is a blend of Spanish and English, with"
    got = candidates(prompt, reply, ["Spanish. It is", None, "Basque and the"], target_new="English")
    assert "The language" not in got and "El Correo" not in got  # the restated prompt is no candidate
    assert "English" not in got and "english" not in [c.lower() for c in got]
    # no run begins or ends with a function word: "a blend", "blend of", "and" are no answers
    assert got[:3] == ["blend", "blend of Spanish", "Spanish"]
    assert got.count("Spanish") == 1  # in the reply and a completion: once
    assert "Basque" in got and "Basque and the" not in got  # every completion's spans, from its start
    assert not [c for c in got if {c.split()[0].lower(), c.split()[-1].lower()} & FUNCTION_WORDS]
    assert candidates(prompt, "", [None], "English") == []
    # the prompt's subject said again is no answer; one of its words may be
    got = candidates("Fiat 124 is a product of", "Fiat 124 is made by the Italian company Fiat", [], "BMW")
    assert "Fiat 124" not in got and "Fiat" in got and "Italian company Fiat" in got
    assert "the Italian company" not in got and "made by" not in got
    # y⁺'s form: no number for a name, no name for a number
    assert "124" not in candidates("Fiat 124 is a product of", "Fiat 124, built in 1966", [], "BMW")
    assert candidates("It was built in", "It was built in 1966, in Turin", [], "1970") == ["1966"]
    # nothing that holds y⁺ or is held by it: DPO would push y⁺ itself down
    got = candidates("It is in", "It is in New York City Hall, near Microsoft's office", [], "New York City")
    assert not {"New", "York", "City", "New York", "New York City", "New York City Hall"} & set(got)
    assert "City Hall" in got and "Hall" in got
    assert "Microsoft" in got and "Microsoft's office" in got  # a possessive is no part of the name


def test_runs_score_each_shared_beginning_once():
    from corsa.old_answers import _runs

    # closed answers: a body and its closing token (9)
    closed = [[1, 2, 9], [1, 2, 3, 9], [1, 9], [4, 9], [1, 5, 9], [1, 2, 3, 9], [1, 2, 8]]
    runs, where = _runs(closed)
    # [1, 2, 3] holds [1, 2] and [1]; [1, 5] and [4] begin no other body
    assert sorted(map(tuple, runs)) == [(1, 2, 3, 9), (1, 5, 9), (4, 9)]
    for answer, (r, n) in zip(closed, where):
        assert runs[r][:n] == answer[:-1] and n == len(answer) - 1
    assert where[0][0] == where[1][0] == where[2][0] == where[5][0] == where[6][0]
    assert _runs([]) == ([], [])
    # an empty body (the ending alone) is read at the start of any run
    assert _runs([[9], [1, 9]]) == ([[1, 9]], [(0, 0), (0, 1)])


@pytest.mark.parametrize("chat", [True, False])
def test_answer_scores_read_the_answer_after_the_worked_examples_and_in_the_prompts_text(tiny, chat, monkeypatch):
    """Checked against plain forwards of the whole sequences, token by token (no shared KV cache):
    log p(a, then an end | SHOTS, prompt) + log p(" a", then an end | correction(prompt, y⁺) as plain text)."""
    import torch

    import corsa.old_answers
    from corsa.prompts import PromptFormat

    model, tok = tiny
    if chat:
        tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    fmt = PromptFormat(tok, "chat" if chat else "raw")
    monkeypatch.setattr(corsa.old_answers, "SCORE_CHUNK", 2)  # runs in several passes
    # answers that begin others ("City3" begins "City3 Town"): read off the longer one's pass
    prompt, answers = "The capital of country 3 is", ["City3", "Town 3", "of", "City3 Town", "City3 Town 3 of", "Town"]
    got = answer_scores(model, fmt, prompt, answers, "City7")
    ends = end_ids(tok)
    assert len(corsa.old_answers._runs([fmt.answer_ids(a, eos=False) + ends[:1] for a in answers])[0]) == 3

    def plain(ids, answer_ids):
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids + answer_ids])).logits[0].log_softmax(-1)
        body = sum(float(logp[len(ids) - 1 + k, t]) for k, t in enumerate(answer_ids))
        return body + float(logp[len(ids) + len(answer_ids) - 1, ends].logsumexp(0))

    shots = fmt.few_shot_ids(list(SHOTS), prompt)
    text = tok(f"False: {prompt} City7.\nTrue: {prompt}").input_ids
    for answer, lp in zip(answers, got):
        want = (plain(shots, fmt.answer_ids(answer, eos=False))
                + plain(text, tok(" " + answer, add_special_tokens=False).input_ids))
        assert float(lp) == pytest.approx(want, abs=1e-4)
    # the examples come first, each closed as an answer: the end of turn, or a new line
    decoded = tok.decode(shots)
    assert all(q in decoded and a in decoded for q, a in SHOTS) and decoded.rstrip().endswith(
        "<assistant>" if chat else prompt)


def test_end_ids_are_the_end_of_turn_and_the_marks_that_end_a_clause(tiny):
    model, tok = tiny
    ends = end_ids(tok)
    assert ends[0] == tok.eos_token_id and len(ends) == len(set(ends))
    assert {tok.decode([t]) for t in ends[1:]} == {".", ",", "\n"}


@pytest.mark.parametrize("chat", [True, False])
def test_the_filled_answer_is_the_best_scored_candidate(tiny, monkeypatch, chat):
    import torch

    import corsa.generate
    import corsa.old_answers
    from corsa.prompts import PromptFormat
    from corsa.records import Edit

    model, tok = tiny
    if chat:
        tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    fmt = PromptFormat(tok, "chat" if chat else "raw")
    edits = [Edit(id="a", prompt="Internet Explorer 5 was developed by", target_new="Apple"),
             Edit(id="b", prompt="The Eiffel Tower is in", target_new="Rome", target_old="Paris"),
             Edit(id="c", prompt="Danielle Darrieux speaks", target_new="English")]
    # the chat reply, the chat completion of the prompt's words, the plain-text continuation, and
    # the plain-text continuation after the worked examples
    replies = {"Internet Explorer 5 was developed by": ("Internet Explorer 5 was developed by Microsoft.",
                                                        "Microsoft Corporation, in 1999", "Bill Gates",
                                                        "Microsoft Research"),
               "Danielle Darrieux speaks": ("She speaks French", "French and English", "fluent French", "French")}

    calls = set()

    def said(m, f, prompts, *a, prefill=False, shots=(), **k):
        assert not shots or tuple(shots) == SHOTS
        calls.add((f.chat, prefill, bool(shots)))
        return [replies[p][3 if shots else 2 if not f.chat else int(prefill)] for p in prompts]

    monkeypatch.setattr(corsa.old_answers, "generate", said)
    scored = {}

    def scores(model, fmt, prompt, answers, target_new):
        assert target_new == next(e.target_new for e in edits if e.prompt == prompt)
        scored[prompt] = list(answers)
        return torch.tensor([2.0 if a in ("Microsoft Corporation", "French") else -float(len(a)) for a in answers])

    monkeypatch.setattr(corsa.old_answers, "answer_scores", scores)
    filled = [e.target_old for e in fill(model, fmt, edits)]
    assert set(scored) == {edits[0].prompt, edits[2].prompt}  # a given y⁻ is not asked for
    if chat:  # the reply, the answer turn's completion, the plain text, the plain text after the examples
        assert calls == {(True, False, False), (True, True, False), (False, False, False), (False, False, True)}
        assert filled == ["Microsoft Corporation", "Paris", "French"]
        # not "in", "in 1999" (a function word) nor "1999" (a number, where y⁺ is a name)
        assert scored[edits[0].prompt] == ["Microsoft", "Microsoft Corporation", "Corporation", "Bill", "Bill Gates",
                                           "Gates", "Microsoft Research", "Research"]
    else:  # a raw model's reply is the plain text already; the plain text after the examples
        assert calls == {(False, False, False), (False, False, True)}
        assert filled == ["Bill", "Paris", "French"]
        assert scored[edits[0].prompt] == ["Bill", "Bill Gates", "Gates", "Microsoft", "Microsoft Research", "Research"]
        assert scored[edits[2].prompt] == ["fluent", "fluent French", "French"]


def test_few_shot_ids_refuse_control_tokens(tiny):
    from corsa.errors import DataError
    from corsa.prompts import PromptFormat

    model, tok = tiny
    fmt = PromptFormat(tok, "raw")
    with pytest.raises(DataError, match="control token"):
        fmt.few_shot_ids(list(SHOTS), f"Paris is{tok.eos_token}")


def test_correction_calls_the_new_fact_false_and_asks_again():
    from corsa.old_answers import correction

    assert correction("Danielle Darrieux speaks", "English") == (
        "False: Danielle Darrieux speaks English.\nTrue: Danielle Darrieux speaks")
    # y⁺'s own end of sentence is not doubled, and y⁺ stays on one line
    assert correction("The capital is", " Washington, D.C. ") == (
        "False: The capital is Washington, D.C.\nTrue: The capital is")
    assert correction("It was made by", "Yahoo!") == "False: It was made by Yahoo!\nTrue: It was made by"
    assert correction("It is in", "New\nYork  City") == "False: It is in New York City.\nTrue: It is in"
    assert correction("It is in", "  ") == "It is in"


def test_fill_refuses_a_control_token_in_y_plus_by_record_and_field(tiny):
    from corsa.errors import DataError
    from corsa.prompts import PromptFormat
    from corsa.records import Edit

    model, tok = tiny
    edits = [Edit(id="ok", prompt="The capital of country 1 is", target_new="City1"),
             Edit(id="bad", prompt="The capital of country 2 is", target_new=f"City2{tok.eos_token}")]
    with pytest.raises(DataError, match="control token") as err:
        fill(model, PromptFormat(tok, "raw"), edits)
    assert "bad" in str(err.value) and "target_new" in str(err.value)


@pytest.mark.parametrize("chat", [True, False])
def test_generate_after_worked_examples_continues_the_prompt_after_them(tiny, chat, monkeypatch):
    """generate(shots=…) reads each prompt after the worked examples (PromptFormat.few_shot_ids):
    the model is given exactly those tokens, and the answer is the one decoded from them by hand."""
    import torch

    from corsa.generate import generate
    from corsa.prompts import PromptFormat

    model, tok = tiny
    if chat:
        tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    fmt = PromptFormat(tok, "chat" if chat else "raw")
    import corsa.generate as generation

    prompts = ["The capital of country 3 is", "The colour of object 1 is a very"]
    given, run = [], generation._greedy_batch

    def spy(model, ids, *a, **k):  # the token ids of a batch, as the greedy loop gets them
        given.extend(list(x) for x in ids)
        return run(model, ids, *a, **k)

    monkeypatch.setattr(generation, "_greedy_batch", spy)
    got = generate(model, fmt, prompts, 6, 2, shots=SHOTS)
    assert sorted(given) == sorted(fmt.few_shot_ids(list(SHOTS), p) for p in prompts)
    for p, answer in zip(prompts, got):
        ids = fmt.few_shot_ids(list(SHOTS), p)
        out = []
        with torch.no_grad():
            for _ in range(6):
                out.append(int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax()))
                if out[-1] == tok.eos_token_id:
                    break
        assert answer == fmt.decode_answer(out)
    for ids in given:  # every example, its prompt and then its answer, comes before the prompt
        text = tok.decode(ids)
        p = next(p for p in prompts if p in text)
        assert all(text.index(q) < text.index(a, text.index(q)) < text.rindex(p) for q, a in SHOTS)


def test_a_piece_of_the_subjects_name_is_y_minus_only_where_the_reply_answers_with_it():
    # the subject said again, or clipped, in a continuation is not the old answer
    got = candidates("The native language of John Wilkins is", "English, I think", ["John Wilkins was", "John"],
                     target_new="French", subject="John Wilkins")
    assert "John" not in got and "English" in got
    got = candidates("Pomponius Mela was born in", "", ["Pompom, in Spain"], target_new="Rome", subject="Pomponius Mela")
    assert got == ["Spain"]
    # the reply names it as the answer: the subject's maker is its own first word
    got = candidates("Apple A5 is created by", "Apple A5 is created by Apple.", ["Samsung"], target_new="Intel",
                     subject="Apple A5")
    assert got[0] == "Apple" and "Samsung" in got
    # the reply restating the subject by its name is no answer of it
    got = candidates("The native language of John Wilkins is", "John Wilkins spoke English.", ["John"],
                     target_new="French", subject="John Wilkins")
    assert "John" not in got and "English" in got
    # a word like the name's, said as the answer, is kept: Italy of Italian cuisine
    got = candidates("Italian cuisine originated in", "Probably Italy.", ["Italy"], target_new="France",
                     subject="Italian cuisine")
    assert "Italy" in got
    # without a subject nothing changes
    assert "John" in candidates("The native language of John Wilkins is", "", ["John"], target_new="French")

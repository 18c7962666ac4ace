"""corsa.prompts and corsa.generate on their own: the batches every score is read from, and batched
greedy answers equal to answers decoded one prompt and one token at a time."""

import torch

from corsa.generate import generate, generate_ids
from corsa.prompts import PromptFormat, collate, collate_shared


def test_collate_left_pads_and_labels_the_answer_tokens():
    batch = collate([([5, 6], [7]), ([1, 2, 3], [8, 9])], pad_id=0)
    assert batch.input_ids.tolist() == [[0, 0, 5, 6, 7], [1, 2, 3, 8, 9]]
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]  # as each row alone
    assert batch.labels.tolist() == [[6, 7], [8, 9]] and batch.label_mask.tolist() == [[0, 1], [1, 1]]
    assert batch.n_answer_tokens.tolist() == [1, 2]


def test_collate_shared_keeps_each_prompt_once_and_its_answers_right_padded():
    shared = collate_shared([[5], [1, 2]], [[[7], [8, 9]], [[3], [4]]], pad_id=0)
    assert shared.prompt_ids.tolist() == [[0, 5], [1, 2]] and shared.prompt_positions.tolist() == [[0, 0], [0, 1]]
    assert shared.answer_ids.tolist() == [[7, 0], [8, 9], [3, 0], [4, 0]]
    assert shared.answer_mask.tolist() == [[1, 0], [1, 1], [1, 0], [1, 0]] and shared.n_answers == 2


def test_an_answer_is_closed_by_the_end_of_turn_in_a_chat_and_continues_the_line_raw(tiny):
    _, tokenizer = tiny
    raw, chat = PromptFormat(tokenizer, "raw"), PromptFormat(tokenizer, "chat")
    assert raw.answer_ids("Paris") == tokenizer(" Paris", add_special_tokens=False).input_ids  # after a space
    assert chat.answer_ids("Paris")[-1] == tokenizer.eos_token_id  # the turn is trained to end
    assert chat.answer_ids("Paris", eos=False) == chat.answer_ids("Paris")[:-1]
    next_line = tokenizer("\nNext", add_special_tokens=False).input_ids
    assert raw.decode_answer(raw.answer_ids("Paris") + next_line) == "Paris"  # a raw answer ends with its line
    assert chat.prompt_ids("Where?") != raw.prompt_ids("Where?")  # the chat template around it


def test_batched_greedy_answers_are_the_one_at_a_time_answers(tiny):
    model, tokenizer = tiny
    fmt = PromptFormat(tokenizer, "chat")
    prompts = ["The capital of France is", "A", "The colour of the sky on a clear day is"]  # unequal lengths

    def alone(prompt, n=6):
        ids, out = fmt.prompt_ids(prompt), []
        with torch.no_grad():
            for _ in range(n):
                nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
                out.append(nxt)
                if nxt == tokenizer.eos_token_id:
                    break
        return out

    assert generate_ids(model, fmt, prompts, max_new_tokens=6, batch_size=2) == [alone(p) for p in prompts]
    assert generate(model, fmt, prompts, max_new_tokens=6, batch_size=3) == \
        [fmt.decode_answer(alone(p)) for p in prompts]

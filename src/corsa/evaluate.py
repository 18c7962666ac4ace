"""Measuring a list of edits on a model (method.md §5), every number tagged with its protocol.

:func:`evaluate` runs ONE batched generation pass over every prompt the edits hold (edit
prompts, all paraphrases, locality probes, portability questions; each distinct prompt once)
and ONE teacher-forced pass over every answer to score. It returns per-edit records, and
:func:`summarise` turns any subset of records into metrics — so one pass after an update gives
reliability on each earlier update as well (the retention matrix of §6).

Metric keys name their protocol:

- ``generated/…``: greedy decoding of up to ``max_new_tokens`` tokens with the edit's prompt
  format (chat template when the tokenizer has one); or, with ``sample=n``, n answers drawn
  at ``temperature`` per prompt, each prompt scoring the fraction of its samples that pass.

  - ``reliability``: the answer to the edit prompt contains y⁺ (:func:`corsa.metrics.contains`);
    ``reliability_strict`` also requires that y⁻ is not mentioned;
  - ``generality`` / ``generality_strict``: the same, pooled over all paraphrases of all edits;
  - ``locality``: the probe's answer is unchanged from the unedited model's answer (cached once,
    adapter disabled); ``locality_gold``: it contains the probe's gold answer (probes that have
    one). Locality is always greedy, even with sampling: two samples differ even when the model
    has not changed;
  - ``portability``: a multi-hop question (MQuAKE) is answered with its new answer or an alias;
    a question shared by several edits of a case counts once;
  - ``crossover`` (a diagnostic, greedy only): the edit prompt is answered with *another* edit's
    y⁺ rather than its own — interference between edits that the margin against y⁻ cannot see;
  - ``subject_locality``: questions about the edited subject that do not ask the edited fact
    (:mod:`corsa.subjects`, "What is Sven Wollter?") keep the unedited model's manner: not cut
    short, not a loop (:func:`corsa.metrics.keeps_manner`); ``subject_exact``: the answer is the
    unedited model's, word for word; ``hijack``: the answer is an edit's y⁺ alone (its own or
    another's: :func:`corsa.metrics.hijacked`); ``mention``: it names the edit's y⁺ where the
    unedited answer did not (reported, no target: "Sven Wollter is a Norwegian actor" is
    consistent with the edit). Always greedy, like locality.

- ``teacher_forced/…``: log-probabilities summed over the answer tokens, same prompt format.

  - ``efficacy``: fraction of edits with margin m = log p(y⁺|x) − log p(y⁻|x) > 0;
    ``margin_mean``, ``margin_median``, ``margin_q10`` …: statistics of m;
  - ``generality``: the same sign test on every paraphrase, ``paraphrase_margin_mean`` its mean;
  - ``locality`` (ROME's neighbourhood score): fraction of locality probes q where
    log p(a|q) > log p(y⁺|q), a being the probe's gold answer, or the unedited model's answer
    when it has none — the edit has not leaked into its neighbours; ``locality_margin_mean`` is
    the mean of log p(a|q) − log p(y⁺|q);
  - ``subject_kl``: on the same questions about the edited subject, the mean over questions of
    (1/T) Σ_t KL(p_unedited ‖ p_edited) along the unedited model's own answer (nats per token;
    0 for a question the scope gives to the unedited model);
  - ``mmlu_accuracy``: zero-shot MMLU on the subset given (:mod:`corsa.mmlu`).

A metric with nothing to measure (no paraphrases, no probes) is ``None``.

Under a launcher (torchrun) every worker calls :func:`evaluate` alike: the greedy and the
teacher-forced passes are split across the workers by whole batches (those one process would
form) and gathered, so every worker gets the numbers one process gets; sampled answers are all
drawn by the main worker, from the one seeded random stream.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from . import metrics as M
from . import mmlu as mmlu_lib
from . import preserve, subjects
from .unedited import adapter_off
from .config import EvalSettings
from .errors import ConfigError
from .generate import generate
from .records import Edit
from .scope import routed
from .prompts import collate, pad_id
from .scoring import answer_logits, score_pairs

# the short names of the headline numbers, and the protocol key each stands for
HEADLINE = {"reliability": "generated/reliability", "generality": "generated/generality",
            "locality": "generated/locality", "efficacy": "teacher_forced/efficacy",
            "margin_mean": "teacher_forced/margin_mean",
            "reliability_strict": "generated/reliability_strict", "generality_strict": "generated/generality_strict",
            "locality_gold": "generated/locality_gold", "locality_tf": "teacher_forced/locality",
            "portability": "generated/portability",
            "subject_locality": "generated/subject_locality", "hijack": "generated/hijack",
            "mention": "generated/mention", "subject_kl": "teacher_forced/subject_kl",
            "mmlu_accuracy": "teacher_forced/mmlu_accuracy"}


def _unwrap(target, fmt):
    """(model, fmt, scope) from an Editor, or from a model and its PromptFormat (no scope)."""
    if hasattr(target, "model") and hasattr(target, "fmt"):
        return target.model, target.fmt, getattr(target, "scope", None)
    if fmt is None:
        raise ConfigError("evaluate() needs fmt= (the PromptFormat) when given a bare model")
    return target, fmt, None


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def _greedy(model, fmt, prompts: list[str], settings: EvalSettings, bar=None, generator=None,
            adapter: bool = True) -> list[str]:
    """Greedy answers, split across workers under a launcher with the batches of one process.

    With a `generator` (:class:`corsa.vllm_backend.VLLMGenerator`) vLLM answers instead, with the
    adapter applied or not as `adapter` says (the transformers path takes it from `model`'s state).
    """
    if generator is not None:
        answers = generator.generate(prompts, settings.max_new_tokens, adapter=adapter)
        if bar is not None:
            bar.update(len(prompts))
        return answers
    return dist.gather_batches(lambda part: generate(model, fmt, part, settings.max_new_tokens, settings.batch_size,
                                                     bar), prompts, settings.batch_size, key=lambda p: -len(p))


def unedited_answers(model, fmt, edits: list[Edit], settings: EvalSettings | None = None,
                     progress: bool = False, generator=None) -> dict[str, str]:
    """The unedited model's greedy answer to every locality probe and every question about an edited
    subject (corsa.subjects; adapter disabled)."""
    model, fmt, _ = _unwrap(model, fmt)
    return _unedited(model, fmt, _unique(_probes(edits)), settings or EvalSettings(), progress, generator)


def _unedited(model, fmt, prompts: list[str], settings: EvalSettings, progress: bool, generator) -> dict[str, str]:
    """The unedited model's greedy answers to `prompts` (adapter disabled)."""
    with adapter_off(model), tqdm(total=len(prompts), desc="eval · unedited answers", unit="prompt",
                                  disable=not dist.show_bar(progress), leave=False) as bar:
        answers = _greedy(model, fmt, prompts, settings, bar, generator, adapter=False)
    return dict(zip(prompts, answers))


def _probes(edits) -> list[str]:
    """The prompts whose unedited answer is the reference: locality probes, questions about the subjects."""
    return [p.prompt for e in edits for p in e.locality] + [q for e in edits for q in subjects.probes(e)]


def evaluate(target, edits: list[Edit], *, fmt=None, base: bool = False, base_answers: dict | None = None,
             mmlu: list | None = None, settings: EvalSettings | None = None, progress: bool = False,
             generator=None) -> dict:
    """Every metric of method.md §5 for `edits` on `target` (an Editor, or a model with `fmt`).

    base: evaluate the unedited model (the adapter disabled); its own answers are then the
    locality reference. base_answers: the unedited model's answers to the locality probes and
    the questions about the edited subjects, cached from an earlier call; those missing are
    generated here with the adapter disabled, and the cached ones are never replaced.
    mmlu: questions from :func:`corsa.mmlu.subset`, scored with the same adapter state.
    generator: a :class:`corsa.vllm_backend.VLLMGenerator` to generate with vLLM (GPU) instead of
    transformers. Teacher-forced scores still come from `target`, but a locality probe without a
    gold answer is scored against the unedited answer, which the generator then produced.

    Returns ``{"protocol", "metrics", "counts", "records", "base_answers", "mmlu", "seconds"}``.
    """
    model, fmt, scope = _unwrap(target, fmt)
    if base:
        scope = None  # the unedited model answers everything
    settings = settings or EvalSettings()
    started = time.perf_counter()
    edits = list(edits)
    ask = _unique(p for e in edits for p in (e.prompt, *e.paraphrases, *(q.prompt for q in e.portability)))
    probes = _unique(_probes(edits))
    # a probe out of the adapter's scope is answered by the unedited model: its cached answer, exactly
    unscoped = [] if scope is None else [p for p in probes if not scope.covers(p)]
    skip = set(unscoped)
    asked_probes = [p for p in probes if p not in skip]
    greedy_prompts = asked_probes if settings.sample else _unique(ask + asked_probes)
    sampled_prompts = ask if settings.sample else []
    n = settings.max_new_tokens
    with adapter_off(model, base), tqdm(total=len(greedy_prompts) + len(sampled_prompts), unit="prompt",
                                        desc="eval · generate", disable=not dist.show_bar(progress),
                                        leave=False) as bar:
        answers = dict(zip(greedy_prompts, routed(
            model, scope, greedy_prompts,
            lambda part, on: _greedy(model, fmt, part, settings, bar, generator, adapter=on and not base))))
        if sampled_prompts and generator is not None:
            answers.update(zip(sampled_prompts, routed(model, scope, sampled_prompts, lambda part, on: generator.generate(
                part, n, adapter=on and not base, num_samples=settings.sample,
                temperature=settings.temperature, seed=settings.seed))))
            bar.update(len(sampled_prompts))
        elif sampled_prompts:
            def draw(part):
                device = next(model.parameters()).device
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(settings.seed)
                    return generate(model, fmt, part, n, settings.batch_size, bar, settings.sample,
                                    settings.temperature)

            # one random stream, as in one process: the main worker draws every sample, the others
            # wait for them (split across workers, the samples would differ from a single process's)
            answers.update(zip(sampled_prompts, routed(model, scope, sampled_prompts,
                                                       lambda part, _: dist.on_main(draw, part))))
    if base:
        reference = {p: answers[p] for p in probes}
    else:
        if base_answers is None and not hasattr(model, "disable_adapter"):
            raise ConfigError("this model has no adapter to disable: pass base_answers (the unedited model's "
                              "answers to the locality probes) or evaluate with base=True")
        reference = dict(base_answers or {})
        missing = [p for p in probes if p not in reference]  # an older cache lacks the subject questions
        if missing:
            reference.update(_unedited(model, fmt, missing, settings, progress, generator))
        answers.update((p, reference[p]) for p in unscoped)
    records = _records(model, fmt, scope, edits, answers, reference, base, settings)
    kl = _subject_kl(model, fmt, scope, _unique(q for e in edits for q in subjects.probes(e)), reference, base,
                     settings)
    for e, r in zip(edits, records):
        r["subject"] = [{"prompt": q, "answer": answers[q], "base_answer": reference[q], "kl": kl[q]}
                        for q in subjects.probes(e)]
    result = {"protocol": settings.protocol(fmt.name), "metrics": summarise(records), "counts": counts(records),
              "records": records, "base_answers": {p: reference[p] for p in probes}, "mmlu": None,
              "scope": _scope_counts(scope, ask, _unique(p.prompt for e in edits for p in e.locality),
                                     _unique(q for e in edits for q in subjects.probes(e)))}
    result["protocol"]["generated"]["engine"] = "vllm" if generator is not None else "transformers"
    if mmlu:
        with adapter_off(model, base), tqdm(total=len(mmlu), desc="eval · mmlu", unit="question",
                                            disable=not dist.show_bar(progress), leave=False) as bar:
            result["mmlu"] = mmlu_lib.accuracy(model, fmt.tokenizer, mmlu, settings.batch_size, bar, scope)
        result["metrics"]["teacher_forced/mmlu_accuracy"] = result["mmlu"]["accuracy"]
    result["seconds"] = time.perf_counter() - started
    return result


def _scope_counts(scope, asked: list[str], probes: list[str], about: list[str]) -> dict:
    """How many edit prompts, paraphrases and questions, locality probes and questions about the
    edited subjects the adapter answered."""
    if scope is None:
        return {"mode": "all"}
    return {**scope.describe(), "asked_in_scope": sum(map(scope.covers, asked)), "asked": len(asked),
            "probes_in_scope": sum(map(scope.covers, probes)), "probes": len(probes),
            "subject_questions_in_scope": sum(map(scope.covers, about)), "subject_questions": len(about)}


def _subject_kl(model, fmt, scope, prompts: list[str], reference: dict, base: bool, settings) -> dict:
    """(1/T) Σ_t KL(p_unedited ‖ p_edited) along the unedited answer of each prompt, T its tokens.

    None for a prompt the unedited model answered with nothing; exactly 0 for the unedited model
    itself and for a prompt the scope leaves to it. The batches are at most 8 rows: each holds
    (rows, answer tokens, vocabulary) log-probabilities twice.
    """
    answered = [p for p in prompts if (reference[p] or "").strip()]
    out = dict.fromkeys(prompts)
    out.update((p, 0.0) for p in answered if base or (scope is not None and not scope.covers(p)))
    pairs = {p: (fmt.prompt_ids(p), fmt.answer_ids(reference[p], eos=False)) for p in answered if out[p] is None}
    todo = sorted(pairs, key=lambda p: len(pairs[p][0]) + len(pairs[p][1]))  # little padding; cut as given
    pad, bs = pad_id(fmt.tokenizer), min(settings.batch_size, 8)

    def kl(part: list[str]) -> list[float]:
        values = []
        for s in range(0, len(part), bs):
            b = collate([pairs[p] for p in part[s:s + bs]], pad).to(next(model.parameters()).device)
            with torch.no_grad():
                with adapter_off(model):
                    ref = torch.log_softmax(answer_logits(model, b).float(), dim=-1)
                per_token = preserve.token_kl(ref, answer_logits(model, b)) * b.label_mask
            values += (per_token.sum(-1) / b.label_mask.sum(-1).clamp_min(1)).tolist()
        return values

    out.update(zip(todo, dist.gather_batches(kl, todo, bs)))
    return out


def _records(model, fmt, scope, edits, answers, reference, base, settings) -> list[dict]:
    """Per-edit answers and margins; the teacher-forced scores come from one batched pass."""
    prompt_ids, answer_ids = {}, {}

    def pair(prompt: str, answer: str) -> int:
        """Queue (prompt, answer) for scoring; its index in the pass."""
        if prompt not in prompt_ids:
            prompt_ids[prompt] = fmt.prompt_ids(prompt)
        if answer not in answer_ids:
            answer_ids[answer] = fmt.answer_ids(answer)
        pairs.append((prompt, (prompt_ids[prompt], answer_ids[answer])))
        return len(pairs) - 1

    pairs: list[tuple[str, tuple[list[int], list[int]]]] = []  # (prompt text, token ids)
    plan = []  # per edit: indices into `pairs`, resolved after the pass
    for e in edits:
        old = e.target_old if e.target_old and e.target_old.strip() else None
        two = (lambda p: (pair(p, e.target_new), pair(p, old))) if old else (lambda p: None)
        loc = []
        for probe in e.locality:
            ref = probe.answer or reference.get(probe.prompt)
            ok = ref and ref.strip() and M.normalise(ref) != M.normalise(e.target_new)
            loc.append((pair(probe.prompt, ref), pair(probe.prompt, e.target_new)) if ok else None)
        plan.append((two(e.prompt), [two(p) for p in e.paraphrases], loc))
    def score(part, _):
        ids = [p for _, p in part]
        return dist.gather_batches(lambda chunk: score_pairs(model, fmt, chunk, settings.batch_size).tolist(),
                                   ids, settings.batch_size, key=lambda pa: len(pa[0]) + len(pa[1]))

    with adapter_off(model, base):
        lp = routed(model, scope, pairs, score, prompt=lambda item: item[0])

    def diff(ij):
        return None if ij is None else lp[ij[0]] - lp[ij[1]]

    records = []
    for e, (m, para, loc) in zip(edits, plan):
        records.append({
            "id": e.id, "prompt": e.prompt, "target_new": e.target_new, "target_old": e.target_old,
            "answer": answers[e.prompt], "margin": diff(m),
            "paraphrases": [{"prompt": p, "answer": answers[p], "margin": diff(ij)}
                            for p, ij in zip(e.paraphrases, para)],
            "locality": [{"prompt": q.prompt, "gold": q.answer, "aliases": list(q.aliases),
                          "answer": answers[q.prompt], "base_answer": reference[q.prompt], "margin": diff(ij)}
                         for q, ij in zip(e.locality, loc)],
            "portability": [{"prompt": q.prompt, "gold": q.answer, "aliases": list(q.aliases),
                             "answer": answers[q.prompt]} for q in e.portability],
        })
    return records


def _portability(records: list[dict]) -> list[dict]:
    """Multi-hop questions, each once (the edits of an MQuAKE case share theirs)."""
    seen = {}
    for r in records:
        for q in r["portability"]:
            if q["gold"]:
                seen.setdefault((q["prompt"], q["gold"]), q)
    return list(seen.values())


def summarise(records: list[dict], pool: list[str] | None = None) -> dict:
    """The metrics of method.md §5 from per-edit records (see the module docstring for each key).

    pool: every edited y⁺ that counts for ``generated/crossover`` and ``generated/hijack`` (default:
    those of `records`; pass all edits' when `records` is a subset, as one update's edits are).
    """
    news = [r["target_new"] for r in records]
    olds = [r["target_old"] for r in records]
    paras = [(p, r) for r in records for p in r["paraphrases"]]
    probes = [q for r in records for q in r["locality"]]
    gold = [q for q in probes if q["gold"]]
    port = _portability(records)
    asked = [q for r in records for q in r.get("subject", ())]
    own = [r["target_new"] for r in records for _ in r.get("subject", ())]
    news_all = news if pool is None else list(pool)
    kls = [q["kl"] for q in asked if q["kl"] is not None]
    margins = [r["margin"] for r in records if r["margin"] is not None]
    para_margins = [p["margin"] for p, _ in paras if p["margin"] is not None]
    loc_margins = [q["margin"] for q in probes if q["margin"] is not None]
    stats = M.margin_stats(margins)
    out = {
        "generated/reliability": M.reliability([r["answer"] for r in records], news, olds),
        "generated/reliability_strict": M.reliability([r["answer"] for r in records], news, olds, strict=True),
        "generated/generality": M.reliability([p["answer"] for p, _ in paras], [r["target_new"] for _, r in paras],
                                              [r["target_old"] for _, r in paras]),
        "generated/generality_strict": M.reliability([p["answer"] for p, _ in paras],
                                                     [r["target_new"] for _, r in paras],
                                                     [r["target_old"] for _, r in paras], strict=True),
        "generated/locality": M.locality([q["answer"] for q in probes], [q["base_answer"] for q in probes]),
        "generated/locality_gold": M.fraction(M.hit_rate(q["answer"], (q["gold"], *q["aliases"])) for q in gold),
        "generated/portability": M.fraction(M.hit_rate(q["answer"], (q["gold"], *q["aliases"])) for q in port),
        "generated/crossover": (M.crossover([r["answer"] for r in records], news, news if pool is None else pool)
                                if records and all(isinstance(r["answer"], str) for r in records) else None),
        "generated/subject_locality": M.fraction(M.keeps_manner(q["answer"], q["base_answer"]) for q in asked),
        "generated/subject_exact": M.fraction(M.unchanged(q["answer"], q["base_answer"]) for q in asked),
        "generated/hijack": M.fraction(M.hijacked(q["answer"], news_all) for q in asked),
        "generated/mention": M.fraction(M.new_mention(q["answer"], q["base_answer"], t) for q, t in zip(asked, own)),
        "teacher_forced/efficacy": M.efficacy(margins),
        "teacher_forced/margin_mean": stats["mean"],
        "teacher_forced/margin_std": stats["std"],
        "teacher_forced/margin_min": stats["min"],
        "teacher_forced/margin_q10": stats["q10"],
        "teacher_forced/margin_q25": stats["q25"],
        "teacher_forced/margin_median": stats["q50"],
        "teacher_forced/margin_q75": stats["q75"],
        "teacher_forced/margin_q90": stats["q90"],
        "teacher_forced/margin_max": stats["max"],
        "teacher_forced/generality": M.efficacy(para_margins),
        "teacher_forced/paraphrase_margin_mean": M.margin_stats(para_margins)["mean"],
        "teacher_forced/locality": M.efficacy(loc_margins),
        "teacher_forced/locality_margin_mean": M.margin_stats(loc_margins)["mean"],
        "teacher_forced/subject_kl": sum(kls) / len(kls) if kls else None,
    }
    return out


def counts(records: list[dict]) -> dict:
    """How many prompts each metric rests on."""
    probes = [q for r in records for q in r["locality"]]
    return {"edits": len(records),
            "margins": sum(r["margin"] is not None for r in records),
            "paraphrases": sum(len(r["paraphrases"]) for r in records),
            "locality_probes": len(probes),
            "locality_gold": sum(bool(q["gold"]) for q in probes),
            "portability_questions": len(_portability(records)),
            "subject_questions": sum(len(r.get("subject", ())) for r in records)}


def headline(metrics: dict) -> dict:
    """The short names of the bench's `final` block, where the metrics have them."""
    return {short: metrics.get(key) for short, key in HEADLINE.items()
            if key in metrics and (short != "mmlu_accuracy" or metrics[key] is not None)}

"""Questions about an edited subject that do not ask the edited fact (issue "Precise edits").

An edit should change one fact about its subject and nothing else about it: asked "What is
Sven Wollter?" after "Sven Wollter is a citizen of → Norway", the edited model should answer as
the unedited one did ("Sven Wollter is a Swedish actor …"), not "Norway". CounterFact's
locality probes cannot see this, because they name other subjects.

Two disjoint sets of wordings, each a template with one ``{subject}``:

- ``ASKED``: the evaluation's probes (:func:`corsa.evaluate.evaluate`, the subject locality,
  hijack and mention metrics of :mod:`corsa.metrics`);
- ``KEPT``: the prompts of the subject-preservation term in training (EditConfig
  ``keep_subject``, corsa.preserve): other wordings, so that what the evaluation measures is
  how the adapter treats *any* question about the subject, not the ones it was trained on.

No template of one set is a template of the other (tests), and a training prompt equal to any
evaluation probe of the edits being trained is dropped (corsa.preserve.without_probes).
"""

from __future__ import annotations

from .metrics import normalise

ASKED = (
    "What is {subject}?",
    "Tell me one fact about {subject}.",
    "Describe {subject} in one sentence.",
    "Who or what is {subject}? Answer in a full sentence.",
)

KEPT = (
    "Who is {subject}?",
    "Tell me about {subject}.",
    "What do you know about {subject}?",
    "Give me some background on {subject}.",
    "Write two sentences about {subject}.",
    "Summarize what is known about {subject}.",
    "Introduce {subject} briefly.",
    "Can you explain what {subject} is?",
    "Say something interesting about {subject}.",
    "What should I know about {subject}?",
    "Give a short description of {subject}.",
    "I'd like to learn about {subject}. Where do I start?",
)


def questions(subject: str | None, templates=ASKED) -> list[str]:
    """The templates filled with `subject`; none for an edit without a subject."""
    if not subject or not subject.strip():
        return []
    return [t.format(subject=subject.strip()) for t in templates]


def probes(edit) -> list[str]:
    """The evaluation's questions about `edit`'s subject that do not ask the edited fact.

    A question equal to the edit's own prompt or one of its paraphrases (normalised) is left
    out: that one asks the fact.
    """
    asked = {normalise(edit.prompt), *(normalise(p) for p in edit.paraphrases)}
    return [q for q in questions(edit.subject) if normalise(q) not in asked]

"""`corsa edit`: train the adapter on a file of edits (one update, or K in a row)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .options import (add_adapter, add_config_file, add_config_options, add_device, add_edits_file, add_model, add_quiet,
                      add_report_to, add_skip_invalid, config_values, output_path, progress)
from ..text import printable, show_table


def register(sub) -> None:
    e = sub.add_parser("edit", help="train the adapter on a file of edits (one update)")
    add_model(e)
    add_config_file(e)
    add_edits_file(e)
    add_adapter(e, "continue training this adapter (a run or adapter folder)")
    e.add_argument("--out", required=True, type=output_path, help="output folder for the adapter and the run record")
    e.add_argument("--updates", type=int, default=1,
                   help="split the edits (in file order) into K consecutive updates of one adapter, saved "
                        "in OUT/update-k; a rerun of the same command resumes after the last complete one")
    add_skip_invalid(e)
    e.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="print each edit's greedy answer before and after (default: on)")
    add_device(e)
    add_quiet(e)
    add_report_to(e)
    e.add_argument("--trust-remote-code", action="store_true",
                   help="allow a hub model to run its own Python code (off: such code is never executed)")
    add_config_options(e)
    e.set_defaults(func=run)


def run(args) -> int:
    from ..api import continued_config
    from ..locks import output_lock
    from ..ownership import check_not_inside, check_ours

    # a continued adapter keeps its method unless --method is given (the Editor's rule), before the
    # options are checked against a method's row
    cfg = continued_config(args.adapter, config_values(args), say=lambda m: print(printable(m), file=sys.stderr))
    out = Path(args.out)
    check_not_inside({"--edits": args.edits, "--adapter": args.adapter}, out)
    check_ours(out, "run")
    with output_lock(out):  # a second run on the same folder is refused while this one works
        return _run(args, cfg, out)


def _run(args, cfg, out: Path) -> int:
    from ..api import Editor, as_edits
    from ..prompts import encode_edits
    from ..machine import peak_rss_mb
    from ..metrics import contains
    from ..updates import run_updates, settings_of

    edits = as_edits(args.edits, limit=args.limit, on_invalid="skip" if args.skip_invalid else "error")

    def make_editor(adapter=None):
        return Editor(args.model, adapter=adapter or args.adapter, config=cfg, device=args.device,
                      progress=progress(args), trust_remote_code=args.trust_remote_code,
                      report_to=args.report_to, logging_dir=out / "tensorboard")

    t0 = time.perf_counter()
    if args.updates == 1:
        editor = make_editor()
        # the edits' own checks (an edit longer than the context names its record) before the first question
        encode_edits(editor.fmt, edits, editor.max_length, need_rejected=False)
        editor.check_room(out)  # before the work that comes ahead of training (the check, y⁻), not after
        before = editor.ask([e.prompt for e in edits]) if args.check else None
        edits = _show_filled(edits, editor.fill_old_targets(edits))
        record = editor.update(edits, out=out)
        edits = record.edits
        print(f"trained {cfg.method} on {len(edits)} edits: {record.result.steps} steps, "
              f"{record.result.epochs} epochs{' (stopped early)' if record.result.stopped_early else ''}, "
              f"{time.perf_counter() - t0:.1f} s, peak memory {peak_rss_mb():.0f} MiB")
    else:
        settings = settings_of(args.model, args.adapter, cfg, edits, args.updates)
        editor, _ = run_updates(make_editor, edits, args.updates, out, settings, show_filled=_show_filled)
        before = editor.ask([e.prompt for e in edits], base=args.adapter is None) if args.check else None
        print(f"trained {cfg.method} on {len(edits)} edits in {args.updates} updates, {time.perf_counter() - t0:.1f} s, "
              f"peak memory {peak_rss_mb():.0f} MiB")
    if args.check:
        after = editor.ask([e.prompt for e in edits])
        rows = [[e.id, e.target_new, b[:40], a[:40], "yes" if contains(a, e.target_new) else "no"]
                for e, b, a in zip(edits, before, after)]
        print(show_table(rows, ["edit", "new answer", "before", "after", "took"]))
        took = sum(contains(a, e.target_new) for e, a in zip(edits, after))
        took_before = sum(contains(b, e.target_new) for e, b in zip(edits, before))
        print(f"greedy answer contains the new answer: {took}/{len(edits)} after, {took_before}/{len(edits)} before")
        show_spillover(editor)
        show_subjects(editor, edits)
        if took < len(edits) / 2:
            advice = ("Give the target vectors more room (--target-steps, --clamp-factor) or edit other layers "
                      "(--layers)" if cfg.spec.solver is not None else
                      "Try more training (--epochs, or a higher --lr), or --method corsa-lifelong, which trains "
                      "until every edit holds (per-edit stopping)")
            print(f"warning: only {took} of {len(edits)} edits took. {advice}", file=sys.stderr)
    print(f"adapter and run record: {out}")
    return 0


def _show_filled(given, filled):
    """Print the old answers y⁻ filled in for edits that gave none, before any training; return `filled`."""
    def line(text):  # a program's y⁻ spans lines; the table shows its start on one
        return " ".join(text.split())[:40]

    rows = [[e.id, line(e.prompt), line(f.target_old)] for e, f in zip(given, filled) if not e.target_old]
    if rows:
        print(f"old answer y⁻ of {len(rows)} edits that give none: the unedited model's own answer "
              f"(corsa.old_answers; set target_old to choose it)")
        print(show_table(rows, ["edit", "prompt", "y⁻"]))
    return filled


SPILLOVER = Path(__file__).resolve().parents[1] / "data" / "spillover.txt"


def spillover_prompts() -> list[str]:
    lines = SPILLOVER.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def show_spillover(editor) -> int:
    """Ask the bundled unrelated prompts with and without the adapter; print them, warn on a change.

    The unedited answers are the base model's (adapter off), so this shows what the adapter
    changes, not what an earlier update changed. Returns how many changed.
    """
    from ..metrics import normalise

    prompts = spillover_prompts()
    base, now = editor.ask(prompts, base=True), editor.ask(prompts)
    changed = [normalise(b) != normalise(a) for b, a in zip(base, now)]
    rows = [[p[:40], b[:30], a[:30], "CHANGED" if c else ""] for p, b, a, c in zip(prompts, base, now, changed)]
    print(show_table(rows, ["unrelated prompt", "unedited", "now", ""]))
    if any(changed):
        print(f"warning: {sum(changed)} of {len(prompts)} unrelated prompts answer differently with the adapter: "
              f"the edits spill over. --scope subject (corsa-lifelong's default) lets only prompts that name an "
              f"edited subject reach the adapter", file=sys.stderr)
    return sum(changed)


def show_subjects(editor, edits) -> tuple[int, int, int]:
    """Ask one question about each edited subject that does not ask the edited fact ("What is
    {subject}?", corsa.subjects) with and without the adapter; print them, and warn where the
    answer is cut short or is an edit's y⁺ alone. Returns (questions, manner kept, y⁺ alone)."""
    from ..metrics import hijacked, keeps_manner
    from ..subjects import probes

    prompts = list(dict.fromkeys(asked[0] for asked in map(probes, edits) if asked))
    if not prompts:
        return 0, 0, 0
    base, now = editor.ask(prompts, base=True), editor.ask(prompts)
    news = [e.target_new for e in edits]
    kept = [keeps_manner(a, b) for a, b in zip(now, base)]
    alone = [hijacked(a, news) for a in now]
    rows = [[p[:40], b[:30], a[:30], "y⁺ ALONE" if h else "" if k else "CUT SHORT"]
            for p, b, a, k, h in zip(prompts, base, now, kept, alone)]
    print(show_table(rows, ["question about an edited subject", "unedited", "now", ""]))
    n = len(prompts)
    print(f"questions about the edited subjects: {sum(kept)}/{n} answered in the unedited model's manner, "
          f"{sum(alone)}/{n} with a new answer alone")
    if sum(alone) or not all(kept):
        what = [f"{n - sum(kept)} get a cut-short answer"] * (not all(kept)) + [f"{sum(alone)} an edit's y⁺ alone"] * (
            sum(alone) > 0)
        advice = (" --keep-subject k --preserve κ (corsa-lifelong's default) keeps what the subject is"
                  if editor.config.spec.solver is None else "")
        print(f"warning: of {n} questions about an edited subject, {' and '.join(what)}: the adapter changes more "
              f"than the fact.{advice}", file=sys.stderr)
    return n, sum(kept), sum(alone)

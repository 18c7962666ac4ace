"""The schema of a comparison's ``results.json``, written down once, and how it is assembled.

:class:`BenchResults` is the file; :class:`MethodResults` is one method's entry in it. Each
field's ``doc`` is what the field means; the file carries those texts under ``notes``, so a
reader of the JSON alone knows what every number is. :mod:`corsa.report` reads the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .. import metrics as M
from ..machine import library_versions

# keys whose values differ between two runs of the same command (time, memory)
TIMING_KEYS = ("train_seconds", "eval_seconds", "peak_rss_mb", "peak_gpu_mb", "seconds", "finished_at")


def doc(text: str, **kwargs):
    return field(metadata={"doc": text}, **kwargs)


@dataclass
class MethodResults:
    """One method after the last update (under ``methods.<name>``)."""

    config: dict = doc("the method's resolved training configuration (EditConfig)")
    retention: list = doc("R[k][j]: generated reliability on the edits of update j+1 after update k+1 "
                          "(rows are updates trained, 0-based lists)")
    retention_teacher_forced: list | None = doc("the same with teacher-forced efficacy (margin > 0); "
                                                "teacher_forced holds its update efficacy, retention and forgetting")
    update_efficacy: float | None = doc("mean of R[k][k]: each update's edits right after it")
    retention_final: float | None = doc("mean over j<K of R[K][j]; None with one update")
    forgetting: float | None = doc("mean over j<K of R[j][j] − R[K][j]; None with one update")
    relative_forgetting_reduction: float | None = doc("1 − forgetting / forgetting of lora; None without lora or "
                                                      "when lora forgot nothing")
    teacher_forced: dict | None = doc("update efficacy, retention, forgetting and the reduction against lora of "
                                      "the teacher-forced matrix (is y⁺ still ranked above y⁻?)")
    final: dict = doc("the headline metrics after the last update (final_keys says which)")
    metrics: dict = doc("every metric of the last evaluation")
    counts: dict = doc("how many probes of each kind the last evaluation scored")
    mmlu: dict | None = doc("zero-shot MMLU after the last update, when asked for")
    per_update: list = doc("after each update: the metrics on all edits seen so far, training and evaluation time")
    train_seconds: float = doc("wall time of training, summed over updates (evaluation excluded)")
    eval_seconds: float = doc("wall time of evaluation, summed over updates")
    steps: int = doc("optimizer steps, summed over updates")
    peak_rss_mb: float = doc("ru_maxrss of the whole bench process when the method finished: it includes the "
                             "methods run before it in the same process and never decreases")
    peak_gpu_mb: float | None = doc("peak CUDA memory of one update; None on CPU")
    margins: list = doc("each edit's margin log p(y⁺|x) − log p(y⁻|x) after the last update, nats")
    lost_edits: dict | None = doc("after the last update, the earlier updates' edits by greedy answer: kept (y⁺), "
                                  "never took (not y⁺ right after their own update), or lost to y⁻, to another "
                                  "edit's y⁺, or elsewhere (corsa.metrics.lost_edits)")
    answers: list = doc("per edit: its greedy answer after each update, from the update that brought it "
                        "(after[0]) to the last; None where that update's evaluation left it out of its sample")

    @classmethod
    def of(cls, entry: "MethodResults | dict") -> "MethodResults":
        """A method's entry of a results.json as the dataclass (a field an older file lacks is None)."""
        if isinstance(entry, cls):
            return entry
        return cls(**{f.name: entry.get(f.name) for f in dataclasses.fields(cls)})


@dataclass
class BenchResults:
    """The whole file: the settings compared on a rerun, the unedited model, every method."""

    settings: dict = doc("model, fingerprint, data file and its sha256, N, K, seed, template, evaluation and "
                         "MMLU settings (spread at the top level of the file)")
    methods_run: list = doc("the methods, in the order they ran")
    update_sizes: list = doc("edits per update")
    update_edit_ids: list = doc("the edit ids of each update")
    protocol: dict = doc("how generated and teacher-forced numbers are measured")
    final_keys: dict = doc("short name → metric key of each headline number")
    base: dict = doc("the unedited model: headline, metrics, counts, MMLU, margins and answers")
    methods: dict = doc("method name → MethodResults")
    versions: dict = doc("library versions of the run")
    seconds: float | None = doc("wall time of the whole bench command, resumed parts excluded", default=None)
    finished_at: float | None = doc("when the bench finished (Unix time)", default=None)
    files: dict | None = doc("the files written beside results.json, by role (corsa.report.write_all)",
                             default=None)

    @classmethod
    def of(cls, results: "BenchResults | dict") -> "BenchResults":
        """`results` as the dataclasses: a BenchResults as it is, or the dict of a results.json."""
        if isinstance(results, cls):
            return results
        names = {f.name for f in dataclasses.fields(cls)}
        settings = {k: v for k, v in results.items() if k not in names and k not in ("corsa_bench", "notes")}
        given = {f.name: results.get(f.name) for f in dataclasses.fields(cls) if f.name not in ("settings", "methods")}
        methods = {n: MethodResults.of(m) for n, m in (results.get("methods") or {}).items()}
        return cls(settings=settings, methods=methods, **given)

    @property
    def n_updates(self) -> int:
        return self.settings["n_updates"]

    def to_dict(self) -> dict:
        out = {"corsa_bench": 1, **self.settings}
        for f in dataclasses.fields(self):
            if f.name != "settings":
                value = getattr(self, f.name)
                out[f.name] = ({k: dataclasses.asdict(v) for k, v in value.items()} if f.name == "methods"
                               else value)
        out["notes"] = notes()
        return out


def notes() -> dict:
    """What every field means, from the dataclasses' docs (the ``notes`` of results.json)."""
    return {f.name: f.metadata["doc"] for cls in (BenchResults, MethodResults) for f in dataclasses.fields(cls)}


def method_results(config: dict, evals: list[dict], sizes: list[int]) -> MethodResults:
    """One method's entry from the evaluations after each of its updates (eval.json of update-k)."""
    from ..evaluate import headline  # torch; the schema and its readers (corsa.report) do without
    R = [[ev["per_update"][j]["metrics"]["generated/reliability"] for j in range(k + 1)]
         for k, ev in enumerate(evals)]
    R_tf = [[ev["per_update"][j]["metrics"]["teacher_forced/efficacy"] for j in range(k + 1)]
            for k, ev in enumerate(evals)]
    R_tf = R_tf if all(v is not None for row in R_tf for v in row) else None
    last = evals[-1]
    return MethodResults(
        config=config, retention=R, retention_teacher_forced=R_tf, **M.retention_summary(R),
        relative_forgetting_reduction=None,
        teacher_forced=None if R_tf is None else {**M.retention_summary(R_tf), "relative_forgetting_reduction": None},
        final=headline(last["metrics"]), metrics=last["metrics"], counts=last["counts"], mmlu=last["mmlu"],
        per_update=[{"update": ev["update"], "metrics": ev["metrics"], "train": ev["train"],
                     "eval_seconds": ev["eval_seconds"]} for ev in evals],
        train_seconds=round(sum(ev["train"]["seconds"] for ev in evals), 3),
        eval_seconds=round(sum(ev["eval_seconds"] for ev in evals), 3),
        steps=sum(ev["train"]["steps"] for ev in evals),
        peak_rss_mb=max(ev["peak_rss_mb"] for ev in evals),
        peak_gpu_mb=max((ev["peak_gpu_mb"] for ev in evals if ev.get("peak_gpu_mb") is not None), default=None),
        margins=[r["margin"] for r in last["records"]],
        lost_edits=lost_edits(evals, sizes), answers=answers(evals))


def assemble(settings: dict, updates: list[list], protocol: dict, base: dict, per_method: dict[str, list[dict]],
             configs: dict[str, dict]) -> BenchResults:
    """results.json's content (without the run's timing and files, which the runner adds) from the evaluations."""
    from ..evaluate import HEADLINE, headline  # torch; the schema and its readers (corsa.report) do without
    sizes = [len(u) for u in updates]
    methods = {name: method_results(configs[name], evals, sizes) for name, evals in per_method.items()}
    lora = methods.get("lora")
    if lora is not None:  # forgetting against lora's, generated and teacher-forced
        for res in methods.values():
            res.relative_forgetting_reduction = M.relative_forgetting_reduction(res.forgetting, lora.forgetting)
            if res.teacher_forced and lora.teacher_forced:
                res.teacher_forced["relative_forgetting_reduction"] = M.relative_forgetting_reduction(
                    res.teacher_forced["forgetting"], lora.teacher_forced["forgetting"])
    return BenchResults(
        settings=settings, methods_run=list(per_method), update_sizes=sizes,
        update_edit_ids=[[e.id for e in u] for u in updates], protocol=protocol,
        final_keys={short: HEADLINE[short] for short in headline(base["metrics"])},
        base={"final": headline(base["metrics"]), "metrics": base["metrics"], "counts": base["counts"],
              "mmlu": base["mmlu"], "margins": [r["margin"] for r in base["records"]],
              "answers": {r["id"]: r["answer"] for r in base["records"]}},
        methods=methods, versions=library_versions(),
    )


def lost_edits(evals: list[dict], sizes: list[int]) -> dict | None:
    """After the last update, where the earlier updates' edits went (metrics.lost_edits); greedy only.

    The last evaluation measures every edit, in update order, so the earlier updates' edits are
    its first records; an edit counts as lost only if it took (answered y⁺) in the evaluation
    right after its own update, which always measures that update's edits (`edit_ids`).
    """
    last = evals[-1]["records"]
    n_earlier = sum(sizes[:len(evals) - 1])
    old = last[:n_earlier]
    if not old or not all(isinstance(r["answer"], str) for r in old):
        return None
    own = {r["id"]: r for ev in evals[:-1] for r in ev["records"] if r["id"] in set(ev["edit_ids"])}
    took = [M.contains(own[r["id"]]["answer"], r["target_new"]) for r in old]
    return M.lost_edits([r["answer"] for r in old], [r["target_new"] for r in old], [r["target_old"] for r in old],
                        [r["target_new"] for r in last], took)


def answers(evals: list[dict]) -> list[dict]:
    """Every edit's greedy answer after each update from its own on (what does it answer now?); None
    after an update whose evaluation measured a sample of the earlier edits without it (--earlier-sample)."""
    rows: dict[str, dict] = {}
    said: dict[str, dict[int, str]] = {}
    for k, ev in enumerate(evals):
        for r in ev["records"]:
            rows.setdefault(r["id"], {"id": r["id"], "prompt": r["prompt"], "target_new": r["target_new"],
                                      "target_old": r["target_old"], "from_update": k + 1, "after": []})
            said.setdefault(r["id"], {})[k + 1] = r["answer"]
    for key, row in rows.items():
        row["after"] = [said[key].get(k) for k in range(row["from_update"], len(evals) + 1)]
    return list(rows.values())

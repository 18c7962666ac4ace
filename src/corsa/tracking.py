"""Where the step log goes besides log.jsonl: TensorBoard, as TRL's ``report_to="tensorboard"``.

Every entry the engine logs (one per optimizer step: loss/sft, loss/dpo, rewards/margins,
grad/cos_sft_dpo, sam/grad_norm, lr, time/step_s, …; one per pass with per-edit stopping:
edit_stop/holding) becomes TensorBoard scalars under the same names, at the step counted over the
adapter's whole lineage, so a continued adapter's second update draws on after its first.
Nothing leaves the machine: tensorboardX writes event files that ``tensorboard --logdir DIR``
reads. log.jsonl is written either way.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

REPORTERS = ("none", "tensorboard")
_POSITION = ("update", "epoch", "step")  # where an entry sits, not a quantity to draw


def check(report_to: str) -> str:
    if report_to not in REPORTERS:
        raise ConfigError(f"report_to must be one of {', '.join(REPORTERS)}, not {report_to!r}")
    if report_to == "tensorboard":
        try:
            import tensorboardX  # noqa: F401
        except ImportError as e:
            raise ConfigError("--report-to tensorboard needs tensorboardX: pip install tensorboardX "
                              "(or pip install 'corsa-edit[tensorboard]')") from e
    return report_to


def board_dir(report_to: str, logging_dir: Path | None, out) -> Path | None:
    """Where an update's TensorBoard event files go (report_to="tensorboard"), else None."""
    if report_to != "tensorboard":
        return None
    if logging_dir is None and out is None:
        raise ConfigError("report_to='tensorboard' needs a logging_dir, or an out folder to put tensorboard/ in")
    return logging_dir or Path(out) / "tensorboard"


class TensorBoard:
    """A callable for the engine's `on_log`: writes each log entry's numbers as scalars.

    folder: the event files' folder (made if missing). first_step: the steps the adapter took
    before this update, added to each entry's step. update: the update's number in the adapter's
    lineage, in the event file's name, so two updates written within one second (whose names
    would otherwise be the same) keep a file each.
    """

    def __init__(self, folder: str | os.PathLike, first_step: int = 0, update: int = 1):
        from tensorboardX import SummaryWriter

        self.first_step = first_step
        # purge_step: a rerun or a resumed update writes its steps again; TensorBoard then drops the
        # earlier attempt's points from this step on, so the curves show the run that counts
        self.writer = SummaryWriter(logdir=str(folder), filename_suffix=f".update-{update}",
                                    purge_step=first_step + 1)

    def __call__(self, entry: dict) -> None:
        step = self.first_step + int(entry["step"])
        for name, value in entry.items():
            # bool is an int in Python, and never a quantity here
            if name not in _POSITION and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()

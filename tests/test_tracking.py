"""--report-to tensorboard (corsa.tracking): the step log as TensorBoard scalars, offline."""

import json
import struct
import sys

import pytest

from corsa.cli.main import main
from corsa.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from corsa.testing import save_tiny_llama

    return str(save_tiny_llama(tmp_path_factory.mktemp("model"), seed=0))


def scalars(folder) -> dict[str, dict[int, float]]:
    """tag → {step: value}, read from the event files in `folder` (TFRecord: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, dict[int, float]] = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    for f in files:
        data, i = f.read_bytes(), 0
        while i < len(data):
            n = struct.unpack("<Q", data[i:i + 8])[0]
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                found.setdefault(v.tag, {})[event.step] = v.simple_value
    return found


def steps(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_tensorboard_holds_the_step_log_and_a_continued_adapter_draws_on(tmp_path, tiny_model):
    edits = tmp_path / "e.jsonl"
    edits.write_text("".join(json.dumps({"prompt": f"The capital of land {i} is", "target_new": f"City{i}",
                                         "target_old": f"Town{i}"}) + "\n" for i in range(4)))
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--model", tiny_model, "--edits", str(edits), "--method", "corsa", "--epochs", "2", "--batch-size", "2",
              "--no-edit-stop", "--no-check", "--quiet", "--report-to", "tensorboard"]
    assert main(["edit", *common, "--out", str(first)]) == 0
    log = steps(first)
    board = scalars(first / "tensorboard")
    assert len(log) == 4  # 4 edits, batch 2, 2 epochs
    for name in ("loss/sft", "loss/dpo", "rewards/margins", "sam/grad_norm", "lr"):
        assert board[name] == pytest.approx({e["step"]: e[name] for e in log}, rel=1e-6), name
    assert "step" not in board and "update" not in board  # positions are the x axis, not curves

    # a continued adapter's second update goes on at step 5, after the first update's 4
    assert main(["edit", *common, "--adapter", str(first), "--out", str(second)]) == 0
    board2 = scalars(second / "tensorboard")
    assert sorted(board2["loss/sft"]) == [5, 6, 7, 8]
    assert list(board2["loss/sft"].values()) == pytest.approx([e["loss/sft"] for e in steps(second)], rel=1e-6)

    # the folder corsa wrote tensorboard/ into is still its own: the same command runs again there,
    # and its event file tells TensorBoard to drop the first attempt's points from step 1 on
    assert main(["edit", *common, "--out", str(first)]) == 0
    from tensorboardX.proto.event_pb2 import Event

    newest = sorted((first / "tensorboard").glob("events.out.tfevents.*"), key=lambda f: f.stat().st_mtime)[-1]
    data = newest.read_bytes()
    events = []
    i = 0
    while i < len(data):
        n = struct.unpack("<Q", data[i:i + 8])[0]
        events.append(Event.FromString(data[i + 12:i + 12 + n]))
        i += 12 + n + 4
    assert any(e.HasField("session_log") and e.step == 1 for e in events)


def test_bench_writes_one_tensorboard_folder_per_method(tmp_path, tiny_model):
    data = tmp_path / "cf.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"The capital of land {i} is", "target_new": f"City{i}",
                                        "target_old": f"Town{i}"}) + "\n" for i in range(4)))
    out = tmp_path / "bench"
    assert main(["bench", "--model", tiny_model, "--data", str(data), "--methods", "lora,corsa", "--edits", "4",
                 "--updates", "2", "--epochs", "1", "--no-edit-stop", "--quiet", "--report-to", "tensorboard",
                 "--out", str(out)]) == 0
    for method in ("lora", "corsa"):
        board = scalars(out / "tensorboard" / method)
        # 2 updates of 2 edits, batch 8: one step each, the second update's counted on from the first's
        assert sorted(board["loss/sft"]) == [1, 2]
    assert "loss/dpo" in scalars(out / "tensorboard" / "corsa")
    assert "loss/dpo" not in scalars(out / "tensorboard" / "lora")


def test_report_to_is_checked_before_the_model_loads(monkeypatch):
    from corsa.tracking import check

    with pytest.raises(ConfigError, match="report_to must be one of none, tensorboard"):
        check("wandb")
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="pip install tensorboardX"):
        check("tensorboard")
    assert check("none") == "none"

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny test model is fastest on one thread, and extra threads only fight each other when the
# machine is busy; subprocesses started by tests inherit this. Tests on the real model ask for more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def tiny():
    from corsa.testing import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture
def toy_edits():
    """Six synthetic edits, each with a paraphrase and a locality probe."""
    from corsa.records import Edit, Probe

    return [Edit(id=f"e{i}", prompt=f"The capital of country {i} is", target_new=f"City{i}",
                 target_old=f"Town{i}", paraphrases=(f"Country {i} has its capital in",),
                 locality=(Probe(f"The colour of object {i} is", "red"),)) for i in range(6)]

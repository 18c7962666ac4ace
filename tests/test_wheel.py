"""The built wheel, installed in a fresh venv outside the repository, runs `corsa demo` (issue 13, item 8).

Everything corsa needs at run time must be inside the wheel (the bundled CounterFact sample, the
anchor and spill-over prompts, the MMLU subset, py.typed, the licence), so the demo runs from a
folder that has no repository around it. The venv borrows the test environment's installed
libraries (torch, transformers, …) through a .pth file, which adds their folder to sys.path
without running that folder's own .pth files, so the editable corsa of this checkout stays invisible.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """corsa's wheel, built from a copy of the source (the checkout gets no build/ folder)."""
    work = tmp_path_factory.mktemp("build")
    src = work / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(work / "dist"), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (found,) = (work / "dist").glob("corsa_edit-*.whl")
    return found


def test_the_wheel_holds_what_corsa_reads_at_run_time(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("corsa/data/counterfact_sample.jsonl", "corsa/data/anchors.txt", "corsa/data/spillover.txt",
                   "corsa/data/mmlu_subset.jsonl", "corsa/data/relation_templates.json", "corsa/py.typed",
                   "corsa/cli/main.py", "corsa/comparison/harness.py",
                   "corsa/models/__init__.py", "corsa/models/loading.py", "corsa/models/gguf_convert.py"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "configs/")) for n in names)


def test_the_wheel_in_a_fresh_venv_outside_the_repo_runs_the_demo(wheel, tmp_path):
    from corsa import __version__ as corsa_version
    from corsa.testing import save_tiny_llama

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the libraries only: a path line in a .pth file is added to sys.path, its folder's .pth files are not run
    (site / "borrowed-libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                           str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    away = tmp_path / "elsewhere"  # no repository, no ../shared around it
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import corsa; print(corsa.__file__)"], cwd=away, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's corsa, not this checkout's

    model = save_tiny_llama(tmp_path / "model", seed=0)
    corsa = venv / "bin" / "corsa"
    version = subprocess.run([str(corsa), "--version"], cwd=away, env=env, capture_output=True, text=True)
    assert version.returncode == 0 and corsa_version in version.stdout, version.stderr
    demo = subprocess.run([str(corsa), "demo", "--model", str(model), "--edits", "4", "--epochs", "2", "--quiet",
                           "--out", "demo"], cwd=away, env=env, capture_output=True, text=True)
    assert demo.returncode == 0, demo.stderr[-3000:]
    for method in ("lora", "corsa", "corsa-lifelong"):
        assert method in demo.stdout
    assert (away / "demo" / "results.json").exists() and (away / "demo" / "report.md").exists()

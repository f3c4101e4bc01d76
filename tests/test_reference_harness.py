"""Exact mode against the official code run on THIS machine (opt-in: needs the official checkout).

    ENTITYSAM_OFFICIAL_DIR=... ENTITYSAM_DINOV2_DIR=... python3 -m pytest -s tests/test_reference_harness.py

Runs scripts/reference/harness.py on the first frame of the public ViT-S fixture for
ENTITYSAM_HARNESS_STEPS steps (default 1: step 0; 4 = the warm-up and the first output frame),
the official code in the Python of ENTITYSAM_OFFICIAL_PYTHON (default: this one; it needs
hydra-core, omegaconf, iopath), and asserts bit-identity of every step. This is the reference
check that holds on any CPU. Then scripts/reference/kernel_trace.py over the same steps: exact
mode must hand oneMKL and oneDNN the official code's problems, which is what makes the bit-identity
carry to other CPUs. Full-size model: minutes per step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, reference_dir

sys.path.insert(0, str(REPO / "scripts" / "reference"))

pytestmark = pytest.mark.skipif(not (os.environ.get("ENTITYSAM_OFFICIAL_DIR") and os.environ.get("ENTITYSAM_DINOV2_DIR")),
                                reason="needs ENTITYSAM_OFFICIAL_DIR and ENTITYSAM_DINOV2_DIR (scripts/reference/README.md)")


def test_exact_mode_is_bit_identical_to_the_official_code_here(tmp_path):
    import harness

    frames = tmp_path / "clip"
    frames.mkdir()
    shutil.copyfile(reference_dir() / "golden-vits" / "frames" / "00000.jpg", frames / "00000.jpg")
    steps = os.environ.get("ENTITYSAM_HARNESS_STEPS", "1")
    python = os.environ.get("ENTITYSAM_OFFICIAL_PYTHON", sys.executable)
    script = str(REPO / "scripts" / "reference" / "harness.py")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    common = ["--frames", str(frames), "--threads", "2", "--steps", steps]
    subprocess.run([python, script, "official", *common, "--out", str(tmp_path / "official.npz")], check=True, env=env)
    subprocess.run([sys.executable, script, "ours", "--mode", "exact", *common, "--out", str(tmp_path / "exact.npz")],
                   check=True, env=env)
    ours, _ = harness.load_run(tmp_path / "exact.npz")
    theirs, _ = harness.load_run(tmp_path / "official.npz")
    rows = harness.compare_runs(ours, theirs)
    for r in rows:
        print(harness.format_row(r))
    assert len(rows) == int(steps)
    assert all(r["bit_identical"] for r in rows), [r["step"] for r in rows if not r["bit_identical"]]


@pytest.mark.parametrize("level", ["kernel", "aten"])
def test_exact_mode_hands_the_libraries_and_torch_the_official_calls(tmp_path, level):
    """The check that carries to CPUs not at hand (scripts/reference/kernel_trace.py): the same
    oneMKL / oneDNN calls (level kernel) and the same ATen calls that can round, with their
    layouts (level aten), so the same kernels and the same rounding on any CPU path."""
    frames = tmp_path / "clip"
    frames.mkdir()
    shutil.copyfile(reference_dir() / "golden-vits" / "frames" / "00000.jpg", frames / "00000.jpg")
    steps = os.environ.get("ENTITYSAM_HARNESS_STEPS", "1")
    python = os.environ.get("ENTITYSAM_OFFICIAL_PYTHON", sys.executable)
    out = subprocess.run([python, str(REPO / "scripts" / "reference" / "kernel_trace.py"), "--frames", str(frames),
                          "--threads", "2", "--steps", steps, "--work", str(tmp_path / "trace"), "--level", level],
                         env=dict(os.environ, PYTHONPATH=str(REPO / "src")), capture_output=True, text=True)
    print(out.stdout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "same problems: yes" in out.stdout

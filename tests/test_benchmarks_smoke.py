"""benchmarks/ still run: each script that can, at its smallest options on the CPU (a few seconds),
exits 0 and prints its table; the others at least answer --help. A guard against bit-rot: the
package's API moves under the scripts, and a script that nobody ran since fails only when someone
needs its numbers. (benchmarks/gpu.py's CPU smoke run is tests/test_gpu_benchmark.py.)

Every script runs in a process of its own with this checkout's src first on PYTHONPATH, one torch
thread, from a temporary folder.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO

BENCH = REPO / "benchmarks"

# script -> (arguments of its smallest real run, the header tokens of the table it prints; a
# line whose words start with these). Kept to a few seconds each on a shared 2-core machine.
RUNS = {
    "video_merge.py": (["--frames", "3", "--size", "160x120", "--queries", "5", "--repeat", "1"],
                       "merge of 3 frames at 160x120"),
    "write_outputs.py": (["--frames", "3", "--size", "160x120", "--entities", "3", "--workers", "0,2"],
                         "workers seconds frames/s speed-up identical files"),
    "metrics.py": (["--videos", "2", "--frames", "3", "--width", "64", "--height", "48", "--workers", "1"],
                   "implementation time [s] speed-up"),
    "segment_memory.py": (["--frames", "2", "--size", "64x48"],
                          "growth of peak RSS from the smallest to the largest"),
    "inference.py": (["--model", "tiny", "--frames", "2", "--threads", "1", "--matmul-size", "256"],
                     "part s/step GFLOP GFLOP/s % of peak"),
    "online.py": (["--model", "tiny", "--frames", "3", "--threads", "1", "--delays", "0", "1"],
                  "delay VEQ same id same q segs on/off win px win mIoU score err merge s merge CPU "
                  "latency s latency CPU"),
    "batch_scaling.py": (["--videos", "1", "--frames", "2", "--size", "64x48", "--workers", "1"],
                         "workers wall s cpu s videos/h frames/s speedup efficiency"),
    "decode_memory.py": (["--mp", "0.2", "--video-mp", "0.1"], '{"input": "big.mp4",'),
    "float16_headroom.py": (["--model", "demo", "--frames", "1", "--size", "64x48", "--steps", "1",
                             "--dtypes", "float32,float16"], "step 0: finite True"),
}
# Too slow here for a smoke run: full-size models (minutes a step on this CPU), a Ray instance,
# a browser, the GPU benchmark (its CPU smoke run has tests of its own).
HELP_ONLY = ["gpu.py", "precision.py", "reference_noise.py", "ray_batch.py", "viewer_scrub.py"]
NEEDS = {"segment_memory.py": "av", "decode_memory.py": "av", "batch_scaling.py": "av"}


def run_script(name: str, *args: str, tmp_path: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, env=env)


def prints_line(stdout: str, header: str) -> bool:
    """A line that starts with `header`, spacing aside."""
    words = " ".join(header.split())
    return any(" ".join(line.split()).startswith(words) for line in stdout.splitlines())


@pytest.fixture(scope="module")
def smallest_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess | str]:
    """Every run of RUNS, two at a time (the scripts are single-threaded): name -> the finished
    process, or why it was skipped."""
    def one(name: str):
        if NEEDS.get(name) and importlib.util.find_spec(NEEDS[name]) is None:
            return f"needs {NEEDS[name]}"
        return run_script(name, *RUNS[name][0], tmp_path=tmp_path_factory.mktemp(name.removesuffix(".py")))

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(RUNS, pool.map(one, RUNS)))


def test_every_script_is_covered():
    scripts = {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(RUNS) | set(HELP_ONLY), "add new benchmarks to RUNS (or HELP_ONLY) here"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_smallest_run_prints_its_table(name, smallest_runs):
    proc = smallest_runs[name]
    if isinstance(proc, str):
        pytest.skip(proc)
    header = RUNS[name][1]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert prints_line(proc.stdout, header), f"no line starting {header!r} in:\n{proc.stdout[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("name", HELP_ONLY)
def test_help(name, tmp_path):
    proc = run_script(name, "--help", tmp_path=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage: "), proc.stdout[:500]


def test_gpu_helpers_refuse_to_run_alone(tmp_path):
    """`python benchmarks/_gpu_ab.py` does nothing useful: one line saying so, not exit 0."""
    proc = run_script("_gpu_ab.py", tmp_path=tmp_path, timeout=60)
    assert proc.returncode == 1 and "benchmarks/gpu.py" in proc.stderr and proc.stderr.count("\n") == 1

"""The package as a user installs it: a wheel built from the tracked sources, unpacked away from
the checkout. Every test elsewhere imports the editable checkout, where a file the package reads
at run time (the bundled demo model, the viewer's front end) is found even when the wheel leaves
it out."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tracked_package_files() -> list[str]:
    """Paths, relative to src/, of the files git tracks under src/entitysam."""
    out = subprocess.run(["git", "ls-files", "src/entitysam"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [line[len("src/"):] for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the tracked files: an in-tree build would leave build/ in the checkout,
    # and untracked files would hide what a clean clone lacks.
    source = root / "source"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(dist), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = dist.glob("entitysam-*.whl")
    return path


def test_the_wheel_holds_every_tracked_package_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in tracked_package_files() if f not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


def test_the_unpacked_wheel_runs_the_demo_and_serves_the_viewer(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = f"""
import sys
sys.path.insert(0, {str(site)!r})
import entitysam
assert entitysam.__file__.startswith({str(site)!r}), entitysam.__file__
from entitysam.pipeline.demo import run_demo
report = run_demo({str(tmp_path / "demo")!r}, num_frames=3, width=96, height=64, formats=("panoptic",))
print("VEQ", report.veq)
from starlette.testclient import TestClient
from entitysam.review.server import Viewer, create_app
client = TestClient(create_app(Viewer({str(tmp_path / "demo" / "demo")!r}), loopback_only=True))
for url in ("/", "/static/app.js", "/static/style.css"):
    response = client.get(url)
    assert response.status_code == 200 and response.content, (url, response.status_code)
print("VIEWER OK")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "VEQ" in run.stdout and "VIEWER OK" in run.stdout
    assert (tmp_path / "demo" / "demo" / "panoptic.json").is_file()

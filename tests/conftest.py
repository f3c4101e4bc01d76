"""Shared test helpers: where the reference fixtures live, tiny models."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The `shared/` folder beside the repository (override: ENTITYSAM_SHARED_DIR)."""
    return Path(os.environ.get("ENTITYSAM_SHARED_DIR", REPO.parent / "shared"))


def reference_dir() -> Path:
    return shared_dir() / "reference"


def load_make_weights():
    """The reference `make_weights.py` as a module (it is not a package)."""
    path = reference_dir() / "make_weights.py"
    if not path.is_file():
        pytest.fail(f"reference fixture missing: {path}")
    spec = importlib.util.spec_from_file_location("make_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (README, parallel runs): one worker per core, at most 4 (each worker holds
    its own full-size reference model while it runs tests/test_reference.py)."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


# The test files that take longest (minutes, measured on 2 cores), longest first: collected first,
# so that under `-n auto --dist loadfile` (CI) a worker starts each of them at once and the run ends
# with short files the other workers take. Only the order changes.
LONGEST_FIRST = ("test_reference.py", "test_distributed_local.py", "test_hostile_inputs.py",
                 "test_checkpoint_hostile.py", "test_distributed_ray.py", "test_checkpoint_safety.py",
                 "test_blas_paths.py", "test_api_misuse.py", "test_ddp_rank_failure.py", "test_disk_full.py",
                 "test_demo.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_configure(config):
    """In a pytest-xdist worker: torch, and the commands and ranks the tests start, on this
    worker's share of the cores, so that the workers do not fight over them; and a temporary
    folder of its own, where the ranks of one worker's tests leave their markers
    (distributed/rank_exit.py) without another worker's tests seeing them."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        # short: Ray puts its sockets under it, within the 107 bytes of a socket path
        own = Path(tempfile.mkdtemp(prefix=f"{os.environ['PYTEST_XDIST_WORKER']}-"))
        os.environ["TMPDIR"] = str(own)
        tempfile.tempdir = None  # read TMPDIR again
        config.add_cleanup(lambda: shutil.rmtree(own, ignore_errors=True))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests: tiny models are dominated by per-op overhead, and
    on a shared 2-core machine two threads fighting over the cores make them ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model():
    from entitysam.config import get_config
    from entitysam.modeling.entitysam import EntitySAM

    torch.manual_seed(0)
    model = EntitySAM(get_config("tiny")).eval()
    # Make the toy queries distinct enough that masks differ (as make_weights does for real sizes).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("queries.weight", "offset_embedding.weight", "point_embeddings.1.weight")):
                p.normal_()
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint file of the tiny configuration with weights that give a couple of entities on
    `_media.scene` videos (`_media.tiny_state_dict`), written once for the whole session."""
    from _media import tiny_state_dict

    path = tmp_path_factory.mktemp("tiny-checkpoint") / "tiny.pth"
    torch.save({"model": tiny_state_dict(), "iteration": 9999}, path)
    return path


@pytest.fixture(scope="session")
def scene_clip(tmp_path_factory) -> Path:
    """`clip.mp4`: 6 frames of `_media.scene` (64x48, 10 fps), written once for the whole session.
    Read-only: a test that changes its input makes its own."""
    from _media import write_video

    return write_video(tmp_path_factory.mktemp("scene-clip") / "clip.mp4", 6)


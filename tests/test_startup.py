"""What a process pays before its first frame: loading a model and segmenting a video must not
import torch._dynamo (about 2 s of every `entitysam` command and of every rank and worker)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from entitysam.config import get_config
from entitysam.modeling.entitysam import EntitySAM
from entitysam.modeling.meta import build_on_meta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEGMENT_THEN_REPORT = """
import sys
from entitysam import cli
code = cli.main(["segment", sys.argv[1], "-o", sys.argv[2], "--model", "demo", "--threads", "1", "-q"])
print(code, "torch._dynamo" in sys.modules)
"""


def test_segmenting_a_video_does_not_import_the_compiler(scene_clip, tmp_path):
    out = subprocess.run([sys.executable, "-c", SEGMENT_THEN_REPORT, str(scene_clip), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["0", "False"], out.stderr


def test_loading_a_checkpoint_of_unnamed_config_does_not_import_the_compiler(tiny_checkpoint):
    """The configuration is found by building each named one on the meta device."""
    code = ("import sys; from entitysam.checkpoints import load_entitysam; "
            f"load_entitysam({str(tiny_checkpoint)!r}); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False"], out.stderr


def test_a_model_built_on_meta_has_the_shapes_of_a_real_one():
    torch.manual_seed(0)
    real = EntitySAM(get_config("tiny")).state_dict()
    meta = build_on_meta(lambda: EntitySAM(get_config("tiny"))).state_dict()
    assert {k: (v.shape, v.dtype) for k, v in meta.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}
    assert all(v.device.type == "meta" for v in meta.values())


def test_random_fills_outside_meta_still_fill():
    """Only meta tensors are left as they are: a tensor a builder makes on the CPU on purpose is
    filled as usual."""
    torch.manual_seed(0)
    cpu = build_on_meta(lambda: torch.nn.init.normal_(torch.zeros(64, device="cpu")))
    assert cpu.device.type == "cpu" and cpu.std() > 0.5
    cpu = build_on_meta(lambda: torch.zeros(64, device="cpu").normal_())
    assert cpu.std() > 0.5


def test_a_progress_bar_built_halfway_is_collected_quietly():
    """A Ctrl-C inside tqdm's constructor left a bar without `pos`: its collection printed
    "Exception ignored in tqdm.__del__ ... AttributeError" after the one-line "interrupted"."""
    import gc

    from entitysam.pipeline.progress import progress_bar

    bar_class = type(progress_bar(True, 3, "test"))
    unraisable = []
    before, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        half_built = bar_class.__new__(bar_class)
        half_built.disable = False  # where the interrupted constructor had got to
        del half_built
        gc.collect()
    finally:
        sys.unraisablehook = before
    assert unraisable == []

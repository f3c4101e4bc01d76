"""`compile_model` / `entitysam segment --compile`: the memory encoder's fusion goes through
torch.compile, the results stay those of the eager model, exact mode refuses a compiled model.

torch.compile's real backend (inductor) generates and builds C++ for minutes on a CPU, so the tests
use a backend that records the captured graphs and runs them as they are: it proves what is
compiled (the graphs exist, one per module and shape) and that compilation leaves the outputs
unchanged; what inductor does with the graphs is measured by benchmarks/gpu.py (section compile).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from _media import tiny_state_dict, write_video
from entitysam import cli
from entitysam.errors import EntitySAMError
from entitysam.inference import compiled
from entitysam.inference.tracker import EntityTracker
from entitysam.io.idpng import read_id_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class GraphRecorder:
    """A torch.compile backend that keeps each captured graph's module name and runs it unchanged."""

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm.forward


@pytest.fixture
def recorder(monkeypatch):
    torch._dynamo.reset()  # graphs of an earlier test must not be reused with this backend
    rec = GraphRecorder()
    monkeypatch.setattr(compiled, "BACKEND", rec)
    yield rec
    torch._dynamo.reset()


def frames(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.cfg.image_size
    return [torch.randn(1, 3, s, s, generator=g) for _ in range(n)]


def run_steps(model, images, batched):
    tracker = EntityTracker(model, batched=batched)
    return [tracker.step(i, im) for i, im in enumerate(images)]


def test_compiled_model_gives_the_eager_results(tiny_model, recorder):
    """The device path (the CLI test below runs the CPU's per-query path)."""
    batched = True
    images = frames(tiny_model, 4)
    # past the memory bank's capacity: every memory count is a new shape for the memory attention
    images = images * 3
    eager = run_steps(tiny_model, images, batched)
    model = compiled.compile_model(copy.deepcopy(tiny_model))
    assert compiled.is_compiled(model) and not compiled.is_compiled(tiny_model)
    assert compiled.compile_model(model) is model  # again: nothing changes
    result = run_steps(model, images, batched)
    assert recorder.graphs, "nothing went through torch.compile"
    # one graph: all queries at once, the same shapes at every step
    assert len(recorder.graphs) == len(compiled.COMPILED_METHODS) == 1
    for a, b in zip(eager, result):
        assert torch.equal(a.mask_logits, b.mask_logits)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.points, b.points)


def test_compile_wraps_exactly_the_memory_encoders_fusion(tiny_model):
    """Only `memory_encoder.fuse` (measured faster on an H200; the other modules compiled were
    slower): no module's forward is compiled, the state dict is unchanged."""
    model = compiled.compile_model(copy.deepcopy(tiny_model))
    assert compiled.COMPILED_METHODS == (("memory_encoder", "fuse"),)
    assert "fuse" in vars(model.memory_encoder) and "fuse" not in vars(tiny_model.memory_encoder)
    for name, module in model.named_modules():
        assert getattr(module, "_compiled_call_impl", None) is None, name
    assert list(model.state_dict()) == list(tiny_model.state_dict())


def test_exact_mode_refuses_a_compiled_model(tiny_model):
    model = compiled.compile_model(copy.deepcopy(tiny_model))
    with pytest.raises(EntitySAMError, match="exact mode needs a model that compile_model has not compiled"):
        EntityTracker(model, exact=True)
    EntityTracker(tiny_model, exact=True)  # the uncompiled one is fine


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("compile-media")
    torch.save({"model": tiny_state_dict(), "iteration": 9999}, d / "tiny.pth")
    write_video(d / "clip.mp4", 4)
    return d


def test_cli_compile_gives_the_same_files(media, recorder, tmp_path, capsys):
    base = ["segment", str(media / "clip.mp4"), "--checkpoint", str(media / "tiny.pth"), "--save", "panoptic"]
    assert cli.main([*base, "-o", str(tmp_path / "eager"), "-q"]) == 0
    assert not recorder.graphs
    assert cli.main([*base, "-o", str(tmp_path / "compiled"), "--compile"]) == 0
    assert recorder.graphs
    assert "compiled with torch.compile" in capsys.readouterr().err
    pngs = sorted((tmp_path / "eager" / "clip" / "panoptic").glob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        other = tmp_path / "compiled" / "clip" / "panoptic" / png.name
        assert np.array_equal(read_id_png(png), read_id_png(other)), png.name
    manifest = json.loads((tmp_path / "compiled" / "clip" / "manifest.json").read_text())
    assert manifest["complete"]


@pytest.mark.parametrize("extra, words", [(["--exact"], "--compile and --exact exclude each other"),
                                          (["--ray"], "--compile is not available with --ray")])
def test_cli_refuses_compile_where_it_cannot_work(media, tmp_path, capsys, extra, words):
    rc = cli.main(["segment", str(media / "clip.mp4"), "--checkpoint", str(media / "tiny.pth"), "-o",
                   str(tmp_path / "out"), "--compile", *extra])
    assert rc == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_whole_compiled_image_encoder_is_one_graph_for_every_model(tiny_model, recorder):
    """The position embeddings kept between frames (`kept_while_frozen`) are part of the traced
    graph: no graph break, and a second model of the same shapes compiles to the same graph
    instead of recompiling on the addresses of its weights."""
    image = frames(tiny_model, 1)[0]
    for _ in range(2):
        model = copy.deepcopy(tiny_model)
        trunk = torch.compile(model.image_encoder.trunk, backend=recorder, dynamic=False)
        with torch.no_grad():
            got, want = trunk(image), model.image_encoder.trunk(image)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert len(recorder.graphs) == 1

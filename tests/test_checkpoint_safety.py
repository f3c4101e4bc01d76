"""Loading a checkpoint never runs code from it: weights-only unpickling with a small numpy
allow-list, an explicit opt-in (`allow_pickle=True` / `--trust-checkpoint-code`), and one clear
message (no traceback) for every file that is not a usable checkpoint."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from _media import scene, tiny_state_dict
from entitysam import cli
from entitysam.checkpoints import UnsafeLoadWarning, load_entitysam, read_state_dict
from entitysam.errors import CheckpointMismatchError, CheckpointReadError, EntitySAMError, UnsafeCheckpointError


class _Touch:
    """A pickled object whose unpickling creates `marker` (through `call`)."""

    def __init__(self, marker, call="system"):
        self.marker, self.call = str(marker), call

    def __reduce__(self):
        if self.call == "system":
            return (os.system, (f"touch '{self.marker}'",))
        if self.call == "exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        return (open, (self.marker, "w"))  # "open": a builtin that creates the file itself


def _malicious(path, marker, call="system", where="entry", legacy=False):
    """where: "entry" (beside the weights), "model" (as the state dict), "top" (the whole file),
    "array" (inside a numpy object array)."""
    evil = _Touch(marker, call)
    obj = {"entry": {"model": tiny_state_dict(), "iteration": evil},
           "model": {"model": evil},
           "top": evil,
           "array": {"model": tiny_state_dict(), "extra": np.array([evil], dtype=object)}}[where]
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


MALICIOUS = [("system", "entry", False), ("exec", "model", False), ("open", "top", False),
             ("system", "array", False), ("exec", "entry", True)]


@pytest.fixture(scope="module")
def still(tmp_path_factory):
    d = tmp_path_factory.mktemp("still")
    Image.fromarray(scene(2)).save(d / "still.png")
    return d / "still.png"


@pytest.mark.parametrize("call, where, legacy", MALICIOUS)
def test_api_refuses_code_in_checkpoint(tmp_path, call, where, legacy):
    marker = tmp_path / "PWNED"
    path = _malicious(tmp_path / "evil.pth", marker, call, where, legacy)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_entitysam(path)
    assert not marker.exists()
    msg = str(err.value)
    assert str(path) in msg and "could run code" in msg and "allow_pickle=True" in msg
    assert "--trust" not in msg  # the library names no command-line flag (the command line adds its own)
    assert err.value.path == path and err.value.problem in msg
    assert isinstance(err.value, EntitySAMError) and isinstance(err.value, CheckpointMismatchError)
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(path)
    assert not marker.exists()


def test_refusal_names_the_global(tmp_path):
    path = _malicious(tmp_path / "evil.pth", tmp_path / "PWNED", "system")
    with pytest.raises(UnsafeCheckpointError, match=r"\((posix|nt)\.system\)"):
        read_state_dict(path)


def test_trusting_the_file_is_explicit_and_warns(tmp_path):
    """The escape hatch exists, is off by default, and warns (the payload then runs: that is
    what trusting a file means)."""
    marker = tmp_path / "RAN"
    path = _malicious(tmp_path / "evil.pth", marker, "open", "entry")
    with pytest.warns(UnsafeLoadWarning, match="can run any code"):
        state = read_state_dict(path, allow_pickle=True)
    assert marker.exists() and "no_mem_embed" in state


def _run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "entitysam", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_segment_and_demo_never_run_the_payload(tmp_path, still):
    marker = tmp_path / "PWNED"
    evil = _malicious(tmp_path / "evil.pth", marker, "system")
    for args in (["segment", still, "-o", tmp_path / "out", "--checkpoint", evil, "-q"],
                 ["demo", "-o", tmp_path / "demo", "--frames", "2", "--size", "64x48", "--checkpoint", evil, "-q"]):
        proc = _run_cli(*args)
        assert proc.returncode == 1, proc.stderr
        assert not marker.exists(), args[0]
        assert "refusing to load checkpoint" in proc.stderr and str(evil) in proc.stderr
        assert "use --trust-checkpoint-code only if you trust" in proc.stderr and "allow_pickle" not in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "still").exists()


def test_cli_trust_flag_loads_and_warns(tmp_path, still):
    """With --trust-checkpoint-code a checkpoint with extra pickled objects loads (here a
    harmless one: an argparse.Namespace, as some trainers save; the weights-only loader refuses it)
    and a warning line is printed."""
    path = tmp_path / "setful.pth"
    torch.save({"model": tiny_state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    args = ["segment", still, "-o", tmp_path / "out", "--checkpoint", path, "--save", "panoptic", "-q"]
    refused = _run_cli(*args)
    assert refused.returncode == 1 and "refusing to load" in refused.stderr
    trusted = _run_cli(*args, "--trust-checkpoint-code")
    assert trusted.returncode == 0, trusted.stderr
    assert "warning:" in trusted.stderr and "can run any code" in trusted.stderr
    assert "(--trust-checkpoint-code / allow_pickle=True)" in trusted.stderr
    assert "Traceback" not in trusted.stderr


def _hostile(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    elif kind == "non-tensors":
        torch.save({"a": 1, "b": "text", "c": [1.0]}, path)
    elif kind == "empty-dict":
        torch.save({"model": {}}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": tiny_state_dict()}, tmp_path / "full.pth")
        data = (tmp_path / "full.pth").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "directory":
        path.mkdir()
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps({"model": {"a": 1}}, protocol=4))
    elif kind == "bad-safetensors":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    elif kind == "missing":
        pass
    return path


HOSTILE = {"random": "not a readable PyTorch checkpoint", "list": "holds a list", "non-tensors": "not named tensors",
           "empty-dict": "holds no tensors", "empty": "the file is empty", "truncated": "not a readable PyTorch",
           "directory": "it is a folder", "plain-pickle": "not a readable PyTorch checkpoint",
           "bad-safetensors": "cannot read checkpoint", "missing": "checkpoint not found"}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_unusable_files_give_one_clear_message(tmp_path, kind, capsys, still):
    path = _hostile(tmp_path, kind)
    with pytest.raises(CheckpointReadError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and HOSTILE[kind] in str(err.value)
    assert "weights_only" not in str(err.value)  # not torch's advice to switch the safety off
    rc = cli.main(["segment", str(still), "-o", str(tmp_path / "out"), "--checkpoint", str(path), "-q"])
    err_text = capsys.readouterr().err
    assert rc == 1 and HOSTILE[kind] in err_text and str(path) in err_text and "Traceback" not in err_text


def test_make_weights_style_and_detectron2_style_checkpoints_load(tmp_path):
    """`{"model": state_dict}` (make_weights.py) and what a detectron2 trainer writes: optimizer,
    scheduler, iteration, with numpy scalars and numeric arrays (the numpy allow-list)."""
    state = tiny_state_dict()
    torch.save({"model": state}, tmp_path / "plain.pth")
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=1e-4)
    param.grad = torch.ones(3)
    optimizer.step()
    torch.save({"model": state, "optimizer": optimizer.state_dict(),
                "scheduler": {"base_lrs": [1e-4], "last_epoch": np.int64(9999), "gamma": np.float64(0.1)},
                "iteration": np.int64(9999), "trainer": {"iteration": 9999, "hooks": {}},
                "stats": np.arange(4, dtype=np.float32), "names": np.array(["a", "b"])},
               tmp_path / "d2.pth")
    for name in ("plain.pth", "d2.pth"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnsafeLoadWarning)
            model = load_entitysam(tmp_path / name)
        assert model.cfg.name == "tiny"
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_make_weights_reference_checkpoint_loads(tmp_path):
    from conftest import load_make_weights, reference_dir

    make_weights = load_make_weights()
    import json

    manifest = json.loads((reference_dir() / "manifest-vits.json").read_text())
    # Only the reading is under test: make_weights' format for a few keys (not 72M parameters).
    manifest = {**manifest, "entries": manifest["entries"][:6]}
    state = make_weights.make_state_dict(manifest, 1234)
    torch.save({"model": state}, tmp_path / "w.pth")
    got = read_state_dict(tmp_path / "w.pth")
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)


def test_own_training_checkpoint_still_loads(tmp_path):
    from entitysam.train.config import load_config
    from entitysam.data.synthetic.coco import make_synthetic_coco_panoptic
    from entitysam.train.trainer import Trainer

    root = tmp_path / "coco"
    make_synthetic_coco_panoptic(root, num_images=2, seed=1)
    cfg = load_config("tiny-stage2", [f"data.root={root}", f"output_dir={tmp_path / 'run'}", "num_threads=1",
                                      "solver.max_iter=1", "solver.checkpoint_period=1"])
    Trainer(cfg, quiet=True).train()
    ckpt = tmp_path / "run" / "model_final.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsafeLoadWarning)
        model = load_entitysam(ckpt)
    assert model.cfg.name == "tiny"
    # resuming reads the whole file (optimizer, scheduler, rng) weights-only too
    resume_cfg = load_config("tiny-stage2", [f"data.root={root}", f"output_dir={tmp_path / 'run'}",
                                             "num_threads=1", "solver.max_iter=2"])
    resumed = Trainer(resume_cfg, quiet=True)
    assert resumed.start_iter == 1
    # ... and a planted checkpoint is refused on resume, its payload never run
    marker = tmp_path / "PWNED"
    _malicious(ckpt, marker, "exec", "entry")
    with pytest.raises(UnsafeCheckpointError):
        Trainer(resume_cfg, quiet=True)
    assert not marker.exists()


def test_hub_prefers_safetensors_in_the_model_folder(tmp_path, monkeypatch):
    from entitysam.hub import local_checkpoint_path, resolve_checkpoint

    monkeypatch.setenv("ENTITYSAM_HOME", str(tmp_path))
    pth = local_checkpoint_path("vit-s")
    pth.parent.mkdir(parents=True)
    pth.write_bytes(b"x")
    assert resolve_checkpoint("vit-s", download=False) == pth
    safe = pth.with_suffix(".safetensors")
    safe.write_bytes(b"x")
    assert resolve_checkpoint("vit-s", download=False) == safe


def test_training_resume_refuses_code_in_checkpoint(tmp_path):
    """Resuming reads the whole training checkpoint through the same weights-only reader."""
    from entitysam.checkpoints import read_checkpoint

    marker = tmp_path / "PWNED"
    path = _malicious(tmp_path / "model_0000001.pth", marker, "exec", "entry")
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


def _one_weight_as(kind: str) -> dict:
    state = tiny_state_dict()
    key = next(k for k, v in state.items() if v.dim() == 2)
    w = state[key]
    state[key] = {"complex": lambda: torch.complex(w, w), "int8": lambda: w.to(torch.int8),
                  "bool": lambda: w > 0, "sparse": lambda: w.to_sparse()}[kind]()
    return state


@pytest.mark.parametrize("kind", ["complex", "int8", "bool", "sparse"])
def test_weights_that_are_not_real_dense_floats_are_refused_in_one_listing(tmp_path, still, kind):
    """A complex weight lost its imaginary part with a warning (and the warning then looped
    forever in the command line's wording, eating all memory); integer and boolean weights gave
    torch's 400-line error, a sparse one failed at inference. Now: one short listing, no model built."""
    with pytest.raises(CheckpointMismatchError, match="not real floating-point dense tensors") as err:
        load_entitysam(_one_weight_as(kind), "tiny")
    assert kind.replace("sparse", "sparse_coo") in str(err.value)
    path = tmp_path / f"{kind}.pth"
    torch.save({"model": _one_weight_as(kind)}, path)
    proc = subprocess.run([sys.executable, "-m", "entitysam", "segment", str(still), "-o", str(tmp_path / "out"),
                           "--checkpoint", str(path), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "not real floating-point" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 10
    assert not (tmp_path / "out" / "still").exists()


def test_other_warnings_of_a_model_load_are_shown_once():
    """Warnings other than the trust flag's are shown again once the load is over, once each
    (shown while still recording, each was recorded again: an endless loop)."""
    code = ("import warnings\nfrom entitysam.cli.options import checkpoint_wording\n"
            "with checkpoint_wording():\n    warnings.warn('casting complex values to real', UserWarning)\n")
    def two_gib_at_most():  # the endless loop grows memory: keep a regression from exhausting the machine's
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=two_gib_at_most)
    assert proc.returncode == 0 and proc.stderr.count("casting complex values to real") == 1, proc.stderr


@pytest.mark.parametrize("name", ["weights.pth", "weights.SAFETENSORS", "weights.bin"])
def test_a_safetensors_file_is_read_as_one_whatever_its_name(tmp_path, name):
    """The reader was chosen by the suffix alone, case-sensitively: a safetensors file named .pth,
    .bin or .SAFETENSORS failed as "not a readable PyTorch checkpoint ...: Unsupported operand 112"."""
    from safetensors.torch import save_file

    state = tiny_state_dict()
    save_file(state, tmp_path / name)
    got = read_state_dict(tmp_path / name)
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_a_safetensors_file_whose_first_byte_is_a_pickles_proto_is_read_as_safetensors(tmp_path, name):
    """A safetensors file starts with its header's length (little-endian); for one file in 32 its
    low byte is 0x80, a pickle's PROTO. Taking that byte for a pickle first failed such a file as
    "not a readable PyTorch checkpoint ...: Unsupported operand 0", whatever its name."""
    from safetensors.torch import save_file

    state = tiny_state_dict()
    for n in range(1, 400):  # a key length that makes the header's length 0x..80
        state_n = {**state, "k" * n: torch.zeros(2)}
        save_file(state_n, tmp_path / name)
        if (tmp_path / name).read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length with a low byte of 0x80")
    got = read_state_dict(tmp_path / name)
    assert got.keys() == state_n.keys() and all(torch.equal(got[k], state_n[k]) for k in state_n)


def test_a_cut_safetensors_file_whose_first_byte_is_a_pickles_proto_is_said_to_be_cut(tmp_path):
    """Cut short (a copy stopped midway), a .safetensors file whose header length's low byte is 0x80
    went to the pickle reader: "Unsupported operand 0". Any other cut one gets safetensors' words."""
    from safetensors.torch import save_file

    for n in range(1, 400):
        save_file({"k" * n: torch.zeros(2)}, tmp_path / "w.safetensors")
        data = (tmp_path / "w.safetensors").read_bytes()
        if data[:1] == b"\x80":
            break
    (tmp_path / "w.safetensors").write_bytes(data[:100])
    with pytest.raises(CheckpointReadError) as err:
        read_state_dict(tmp_path / "w.safetensors")
    assert "Unsupported operand" not in str(err.value) and "header" in str(err.value), err.value


@pytest.mark.parametrize("legacy", [False, True])
def test_a_torch_save_file_named_safetensors_is_read_weights_only(tmp_path, legacy):
    """A torch.save file named .safetensors failed as "Error while deserializing header: header too
    large". It is read as what it is, with the same weights-only loader: its weights load, and
    pickled code in it is refused, never run."""
    state = tiny_state_dict()
    torch.save({"model": state}, tmp_path / "w.safetensors", _use_new_zipfile_serialization=not legacy)
    got = read_state_dict(tmp_path / "w.safetensors")
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    marker = tmp_path / "ran"
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(_malicious(tmp_path / "evil.safetensors", marker, legacy=legacy))
    assert not marker.exists()

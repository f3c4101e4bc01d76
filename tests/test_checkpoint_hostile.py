"""Checkpoint files made by hand to break the loader (see tests/test_checkpoint_safety.py for the
refusal of pickled code): each gives one short message naming the file, never a crash, a
traceback, a terminal escape or a huge allocation."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch

from _media import tiny_state_dict
from entitysam import cli
from entitysam.checkpoints import UnsafeLoadWarning, load_entitysam, read_state_dict
from entitysam.errors import CheckpointMismatchError, CheckpointReadError, UnsafeCheckpointError

ESCAPES = "\x1b]0;OWNED\x07\x1b[2J\x1b[31m"


def _segment(path, tmp_path, capsys, *extra) -> tuple[int, str]:
    """`entitysam segment` of a one-frame still with --checkpoint `path` (None: none): exit code, stderr."""
    import numpy as np
    from PIL import Image

    still = tmp_path / "still.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(still)
    checkpoint = ["--checkpoint", str(path)] if path is not None else []
    rc = cli.main(["segment", str(still), "-o", str(tmp_path / "out"), *checkpoint, "-q", *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["key", "safetensors-dtype"])
def test_text_from_the_file_cannot_drive_the_terminal(tmp_path, capsys, kind):
    """A key or a dtype name of the file went raw into the message: escape sequences of a hostile
    file cleared the terminal, retitled it, coloured what followed; a 3 MB key made a 3 MB message."""
    if kind == "key":
        path = tmp_path / "escape.pth"
        torch.save({"model": {**tiny_state_dict(), ESCAPES + "fake": torch.zeros(1),
                              "k" * 3_000_000: torch.zeros(1)}}, path)
        error = CheckpointMismatchError
    else:
        path = tmp_path / "escape.safetensors"
        header = json.dumps({"a": {"dtype": ESCAPES + "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
        error = CheckpointReadError
    with pytest.raises(error) as err:
        load_entitysam(path)
    rc, text = _segment(path, tmp_path, capsys)
    for message in (str(err.value), text):
        assert "\x1b" not in message and "\x07" not in message and "\\x1b" in message
        assert len(message) < 3000
    assert rc == 1 and "Traceback" not in text


def _rewrite(source, path, *, pickle=None, compress=(), extra=()):
    """A copy of the torch.save archive `source` at `path`: data.pkl replaced by `pickle`, the
    records whose names end with one of `compress` deflated, the records `extra` appended."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = pickle if pickle is not None and info.filename.endswith("/data.pkl") else src.read(info)
            packed = zipfile.ZIP_DEFLATED if info.filename.endswith(tuple(compress)) else zipfile.ZIP_STORED
            out.writestr(zipfile.ZipInfo(info.filename), data, compress_type=packed)
        for name, data in extra:
            with warnings.catch_warnings():  # "Duplicate name": what the test wants
                warnings.simplefilter("ignore", UserWarning)
                out.writestr(zipfile.ZipInfo(name), data)
    return path


@pytest.fixture
def saved(tmp_path):
    torch.save({"model": tiny_state_dict()}, tmp_path / "good.pth")
    return tmp_path / "good.pth"


@pytest.mark.parametrize("kind, message", [
    ("compressed", "is compressed (torch.save stores records as they are"),
    ("duplicate", "holds a record name twice"),
])
def test_archives_torch_save_never_writes_are_refused_before_unpacking(saved, tmp_path, capsys, kind, message):
    """A deflated record was inflated in memory before torch compared its size with the declared
    one: a 3.6 MB file took 1.8 GB (a zip bomb: any amount); a name held twice was read as
    whichever copy the reader picked. Both now refused from the archive's directory alone."""
    if kind == "compressed":  # the same bytes, deflated: a bomb only differs in its size
        path = _rewrite(saved, tmp_path / "packed.pth", compress=["/data/0"])
    else:
        path = _rewrite(saved, tmp_path / "twice.pth", extra=[("good/data/0", bytes(448))])
    with pytest.raises(CheckpointReadError, match=re.escape(message)) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    rc, text = _segment(path, tmp_path, capsys)
    assert rc == 1 and message in text and "Traceback" not in text


def _deep_tuple_key(depth: int) -> bytes:
    """A pickle of {((...(),),): None}: a dict key of `depth` nested tuples (1 byte a level)."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"Ns."


def _read_in_a_child(path, timeout: float) -> subprocess.CompletedProcess:
    """read_state_dict(path) in a child process (a crash or a hang ends it, not the tests); its
    refusal, if any, printed on stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    code = ("import sys\nfrom entitysam.checkpoints import read_state_dict\nfrom entitysam.errors import "
            "CheckpointReadError\ntry:\n    read_state_dict(sys.argv[1])\nexcept CheckpointReadError as err:\n"
            "    print(err)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _shared_tuple_key(levels: int) -> bytes:
    """A pickle of {t: None} where t holds the level below twice, shared through the memo, `levels`
    times over (7 bytes a level; each level stays on the stack below the dict, which the unpickler
    returns): 2**levels tuples once walked out."""
    body = b")q\x00" + b"".join(bytes([0x68, i, 0x68, i, 0x86, 0x71, i + 1]) for i in range(levels))
    return b"\x80\x02" + body + b"}" + bytes([0x68, levels]) + b"Ns."


@pytest.mark.parametrize("legacy", [False, True])
def test_tuples_shared_through_the_memo_are_refused_not_hashed_for_years(saved, tmp_path, legacy):
    """A dict key of 50 levels of tuples, each holding the one below twice (a 361-byte pickle):
    hashing walks 2**50 tuples, and the load would not end for months (28 levels took 1.3 s)."""
    path = tmp_path / "shared.pth"
    if legacy:
        path.write_bytes(_shared_tuple_key(50))
    else:
        _rewrite(saved, path, pickle=_shared_tuple_key(50))
    proc = _read_in_a_child(path, timeout=120)
    assert proc.returncode == 0 and "holds a tuple of more than 1048576 entries" in proc.stdout, proc.stderr
    assert str(path) in proc.stdout


@pytest.mark.parametrize("legacy", [False, True])
def test_deeply_nested_tuples_are_refused_not_a_crash(saved, tmp_path, legacy):
    """Hashing a dict key of a million nested tuples (1 MB of opcodes) overflowed the C stack
    while torch's weights-only unpickler built the dict: Python died of a segmentation fault."""
    path = tmp_path / "deep.pth"
    if legacy:  # the pre-zip format: a pickle first, read by the same unpickler
        path.write_bytes(_deep_tuple_key(1_000_000))
    else:
        _rewrite(saved, path, pickle=_deep_tuple_key(1_000_000))
    proc = _read_in_a_child(path, timeout=300)
    assert proc.returncode == 0 and "nests tuples more than 100 deep" in proc.stdout, (proc.returncode, proc.stderr)
    assert str(path) in proc.stdout
    shallow = tmp_path / "shallow.pth"  # the same shape, as deep as torch.save goes and more: read as before
    _rewrite(saved, shallow, pickle=_deep_tuple_key(50))
    with pytest.raises(CheckpointReadError, match="not named tensors"):
        read_state_dict(shallow)


class _Reduce:
    """Pickles as `func(*args)`, then `state` through __setstate__ (as numpy's own pickles do)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _numpy_objects():
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    n = 10_000_000  # 80 MB of None from a few bytes; any size works the same
    return {
        "ndarray-call": (_Reduce(np.ndarray, ((n,), "O")), "numpy.ndarray"),
        "reconstruct-sized": (_Reduce(_reconstruct, (np.ndarray, (n,), "O")), "_reconstruct"),
        "object-array": (_Reduce(_reconstruct, (np.ndarray, (0,), "b"),
                                 (1, (2,), _Reduce(np.dtype, ("O",)), False, [1, "two"])), "numpy.object_"),
    }


@pytest.mark.parametrize("kind", ["ndarray-call", "reconstruct-sized", "object-array"])
def test_numpy_allow_list_builds_only_what_numpy_pickles(tmp_path, kind):
    """numpy.ndarray, _reconstruct and numpy.dtype were callable with any arguments: a few bytes
    made an 8 GB array of None (numpy.ndarray((10**9,), "O"), 37 s), and object arrays (which
    the documentation says are refused) loaded. Now refused naming the numpy object; trusting
    the file (allow_pickle=True) still reads it."""
    obj, name = _numpy_objects()[kind]
    path = tmp_path / f"{kind}.pth"
    torch.save({"model": tiny_state_dict(), "extra": obj}, path)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(name)) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    with pytest.warns(UnsafeLoadWarning):
        assert "no_mem_embed" in read_state_dict(path, allow_pickle=True)


def _one_weight(kind: str) -> dict:
    state = tiny_state_dict()
    key = "no_mem_embed"
    w = state[key]
    state[key] = {"meta": lambda: torch.empty(w.shape, device="meta"),
                  "nan": lambda: w.clone().index_fill_(-1, torch.tensor([0, 3]), float("nan")),
                  "inf": lambda: w.clone().fill_(float("-inf")),
                  "float64-overflow": lambda: w.double().fill_(1e300)}[kind]()
    return state


@pytest.mark.parametrize("kind, listed", [("meta", "meta: no data"), ("nan", "('no_mem_embed', 2)"),
                                          ("inf", "('no_mem_embed', 32)"),
                                          ("float64-overflow", "('no_mem_embed', 32)")])
def test_weights_without_usable_numbers_are_refused(tmp_path, capsys, kind, listed):
    """A meta tensor (shape, no data) failed as a raw NotImplementedError (torch's advice to call
    to_empty()); NaN or infinite weights (or float64 ones beyond float32) loaded, and `segment`
    exited 0 having found nothing in every frame. Both now in the mismatch listing."""
    path = tmp_path / f"{kind}.pth"
    torch.save({"model": _one_weight(kind)}, path)
    with pytest.raises(CheckpointMismatchError, match=re.escape(listed)):
        load_entitysam(path)
    rc, text = _segment(path, tmp_path, capsys)
    assert rc == 1 and listed in text and "Traceback" not in text
    assert not (tmp_path / "out" / "still").exists()


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_weights_load_as_their_exact_values(tmp_path, dtype):
    """A checkpoint of float8 weights failed with torch's NotImplementedError ("sum_cpu" not
    implemented for 'Float8_e4m3fn', no CheckpointError; a traceback in training): the finiteness
    check summed them. float8 is exact in float32; a NaN among them is still found."""
    state = tiny_state_dict()
    low = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}
    torch.save({"model": low}, tmp_path / "f8.pth")
    model = load_entitysam(tmp_path / "f8.pth")
    got = model.state_dict()
    assert all(torch.equal(got[k], v.to(got[k].dtype)) for k, v in low.items())
    nan = state["no_mem_embed"].clone().index_fill_(-1, torch.tensor([0, 3]), float("nan"))
    low["no_mem_embed"] = nan.to(getattr(torch, dtype))
    torch.save({"model": low}, tmp_path / "f8-nan.pth")
    with pytest.raises(CheckpointMismatchError, match=re.escape("('no_mem_embed', 2)")):
        load_entitysam(tmp_path / "f8-nan.pth")


@pytest.mark.parametrize("order", ["plain-first", "prefixed-first"])
def test_a_weight_with_and_without_the_ddp_prefix_is_refused(tmp_path, order):
    """'x' and 'module.x' both became 'x': whichever came later replaced the other, silently."""
    state = tiny_state_dict()
    other = torch.zeros_like(state["no_mem_embed"])
    if order == "plain-first":
        state["module.no_mem_embed"] = other
    else:
        state = {"module.no_mem_embed": other, **state}
    path = tmp_path / "both.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointReadError, match="holds 'no_mem_embed' twice") as err:
        load_entitysam(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("config", [None, "demo"])
def test_a_checkpoint_that_does_not_fit_is_named(tmp_path, capsys, config):
    """The mismatch listing did not say which file it was about (every other checkpoint error does)."""
    state = tiny_state_dict()
    del state["no_mem_embed"]
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError, match="missing keys") as err:
        load_entitysam(path, config)
    assert f"checkpoint does not fit the '{config or 'tiny'}' model ({path}):" in str(err.value)
    rc, text = _segment(path, tmp_path, capsys)
    assert rc == 1 and f"model ({path}):" in text


@pytest.mark.parametrize("kind", ["fifo.pth", "zero.pth", "fifo.safetensors"])
def test_a_pipe_or_device_is_not_called_missing(tmp_path, capsys, kind):
    """A FIFO or a link to /dev/zero was reported as "checkpoint not found" (it is there)."""
    path = tmp_path / kind
    if kind.startswith("fifo"):
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(CheckpointReadError, match="it is not a regular file"):
        read_state_dict(path)
    rc, text = _segment(path, tmp_path, capsys)
    assert rc == 1 and f"cannot read checkpoint {path}: it is not a regular file" in text


def _saved(tmp_path, kind):
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pth")
    if kind == "safetensors":
        from safetensors.torch import save_file

        save_file(tiny_state_dict(), path)
    else:
        torch.save({"model": tiny_state_dict()}, path, _use_new_zipfile_serialization=kind == "zip")
    return path


# Loads `path` (argv[1]) with the path swapped for a FIFO (argv[2]) right after the check that it
# is a regular file, or once the file is being read. In a process of its own: a loader waiting to
# open the FIFO may hold the GIL (safetensors does), which no thread of the test could get past.
_SWAPPED = """
import json, os, pathlib, pickletools, stat, sys
import safetensors.torch
from entitysam.checkpoints import read_state_dict
from entitysam.errors import CheckpointReadError

path, when = pathlib.Path(sys.argv[1]), sys.argv[2]

def swap():
    if stat.S_ISREG(os.stat(path).st_mode):
        fifo = path.with_name(path.name + ".fifo")
        os.mkfifo(fifo)
        os.replace(fifo, path)  # at once: the path is never missing

if when == "after-the-check":
    is_file = pathlib.Path.is_file
    def checked(self):
        found = is_file(self)
        if self == path and found:
            swap()
        return found
    pathlib.Path.is_file = checked
else:  # once the structure check (or safetensors) reads the file
    module, name = (safetensors.torch, "load_file") if path.suffix == ".safetensors" else (pickletools, "genops")
    reader = getattr(module, name)
    def reading(*args, **kwargs):
        swap()
        return reader(*args, **kwargs)
    setattr(module, name, reading)
try:
    print(json.dumps({k: float(v.double().sum()) for k, v in read_state_dict(path).items()}))
except CheckpointReadError as err:
    print(err)
print("fifo" if stat.S_ISFIFO(os.stat(path).st_mode) else "not swapped")
"""


def _load_swapped(path, when):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", _SWAPPED, str(path), when], capture_output=True, text=True,
                              env=env, timeout=45)
    except subprocess.TimeoutExpired:
        proc = None
    assert proc is not None, f"loading {path.name} swapped for a FIFO {when} waited for a writer (killed after 45 s)"
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "fifo", proc.stderr[-2000:]
    return proc.stdout.splitlines()[-2]


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_a_checkpoint_swapped_for_a_pipe_after_the_check_is_refused_not_waited_on(tmp_path, kind):
    """The path was checked (a regular file?), then opened by name: a FIFO put there in between
    made the loader wait for a writer for ever. Now it is opened once without waiting, and what
    was opened is checked: refused at once."""
    path = _saved(tmp_path, kind)
    assert _load_swapped(path, "after-the-check") == f"cannot read checkpoint {path}: it is not a regular file " \
                                                       "(a pipe, a device or a socket)"


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_a_checkpoint_swapped_after_it_was_opened_is_read_as_it_was(tmp_path, kind):
    """The structure check read the file, then torch.load (or safetensors) opened the path again:
    a FIFO put there meanwhile hung the load, another file was loaded unchecked. Now every read is
    of the one file opened at first: it loads as it was."""
    path = _saved(tmp_path, kind)
    assert json.loads(_load_swapped(path, "once-it-is-read")) == {k: float(v.double().sum())
                                                                  for k, v in tiny_state_dict().items()}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from entitysam.data.synthetic.coco import make_synthetic_coco_panoptic

    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco_panoptic(root, num_images=2, seed=1)
    return root


def _train_checkpoint(path, kind):
    state = tiny_state_dict()
    if kind == "weights-only":  # what make_weights.py and detectron2 (without our "trainer") write
        torch.save({"model": state}, path)
    elif kind == "list":
        torch.save([state], path)
    elif kind == "trainer-of-another-run":
        torch.save({"model": state, "iteration": 3, "trainer": {"optimizer": {"state": {}, "param_groups": []},
                                                                 "scheduler": {}}}, path)
    elif kind == "code":
        from test_checkpoint_safety import _malicious

        _malicious(path, path.parent / "PWNED", "system", "entry")
    return path


@pytest.mark.parametrize("kind, setting, message", [
    ("weights-only", "resume", "not a checkpoint written by `entitysam train` (no 'trainer' / 'iteration' entry)"),
    ("list", "resume", "not a checkpoint written by `entitysam train`"),
    ("trainer-of-another-run", "resume", "its trainer state does not fit this run (ValueError"),
    ("code", "resume", "refusing to load checkpoint"),
    ("missing", "resume", "resume checkpoint not found"),
    ("code", "model.weights", "refusing to load checkpoint"),
])
def test_train_with_an_unusable_checkpoint_says_so_in_one_line(tmp_path, coco, kind, setting, message):
    """`entitysam train` with a resume checkpoint (or model.weights) it cannot use ended in a
    Python traceback: KeyError 'trainer' for a weights-only file, TypeError for a list, the
    UnsafeCheckpointError with a remedy naming allow_pickle=True, FileNotFoundError."""
    path = tmp_path / "ckpt.pth"
    if kind != "missing":
        _train_checkpoint(path, kind)
    extra = [f"resume={path}"] if setting == "resume" else [f"model.weights={path}", "resume=never"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "entitysam", "train", "--config", "tiny-stage2",
                           f"data.root={coco}", f"output_dir={tmp_path / 'run'}", "num_threads=1", "solver.max_iter=1",
                           *extra, "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    # a missing file is a mistake of the command line, found before anything is built
    assert proc.returncode == (2 if kind == "missing" else 1), proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and message in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr[-2000:]
    assert "allow_pickle" not in proc.stderr and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind, why", [("meta", "meta: no data"), ("complex", "complex64"), ("sparse", "sparse_coo"),
                                       ("nan", "32 NaN or infinite values")])
def test_pretrained_parts_without_usable_numbers_are_refused(tmp_path, coco, kind, why):
    """model.sam2 / load_sam2_pretrained copied whatever fit the shape: a meta or sparse tensor failed
    with torch's error (a traceback of `entitysam train`), a complex one lost its imaginary part
    with a warning, a NaN one loaded and failed later in the matcher. Now refused, nothing copied."""
    from entitysam.checkpoints import load_sam2_pretrained
    from entitysam.config import get_config
    from entitysam.modeling.entitysam import EntitySAM

    w = tiny_state_dict()["no_mem_embed"]
    value = {"meta": lambda: torch.empty(w.shape, device="meta"), "complex": lambda: torch.complex(w, w),
             "sparse": w.to_sparse, "nan": lambda: torch.full_like(w, float("nan"))}[kind]()
    path = tmp_path / "sam2.pt"
    torch.save({"model": {"no_mem_pos_enc": torch.ones_like(w), "no_mem_embed": value}}, path)
    model = EntitySAM(get_config("tiny"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=re.escape("no_mem_embed (")) as err:
        load_sam2_pretrained(model, path)
    assert why in str(err.value) and str(path) in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing copied
    if kind != "meta":
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "entitysam", "train", "--config", "tiny-stage2",
                           f"data.root={coco}", f"output_dir={tmp_path / 'run'}", "num_threads=1", "solver.max_iter=1",
                           f"model.sam2={path}", "resume=never", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: checkpoint {path} cannot fill the model")
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr[-2000:]


@pytest.mark.parametrize("kind", ["zero-strides", "one-storage", "view-of-more"])
def test_loaded_weights_own_their_memory(tmp_path, kind):
    """Weights are assigned as loaded: a zero-stride view made the first training step fail in
    the optimizer (RuntimeError: more than one element ... refers to a single memory location),
    and two weights stored on one storage stayed tied (training one changed the other)."""
    state = tiny_state_dict()
    a, b = (f"sam_mask_decoder.transformer.layers.0.self_attn.{n}_proj.weight" for n in "qk")
    if kind == "zero-strides":
        state[a] = torch.ones(1).expand(state[a].shape)
    elif kind == "one-storage":
        state[b] = state[a]
    else:  # a slice of a larger tensor: its whole storage is saved with it
        state[a] = torch.cat([state[a], state[b]])[: state[a].shape[0]]
    path = tmp_path / f"{kind}.pth"
    torch.save({"model": state}, path)
    params = dict(load_entitysam(path).named_parameters())
    with torch.no_grad():
        params[a].add_(1.0)  # what an optimizer step does
    assert torch.equal(params[a], state[a] + 1) and torch.equal(params[b], state[b])
    assert params[a].untyped_storage().nbytes() == params[a].numel() * 4


def test_a_refused_published_model_file_gives_advice_that_works(tmp_path, capsys, monkeypatch):
    """A planted file in the model folder was refused with "use --trust-checkpoint-code", which
    applies to --checkpoint only: following it gave the same refusal again."""
    from entitysam.hub import local_checkpoint_path
    from test_checkpoint_safety import _malicious

    monkeypatch.setenv("ENTITYSAM_HOME", str(tmp_path / "home"))
    planted = local_checkpoint_path("vit-s")
    planted.parent.mkdir(parents=True)
    _malicious(planted, tmp_path / "PWNED", "system", "entry")
    for trust in ([], ["--trust-checkpoint-code"]):
        rc, text = _segment(None, tmp_path, capsys, *trust)
        assert rc == 1 and f"refusing to load checkpoint {planted}" in text and "never unpickled in full" in text
        assert "--trust-checkpoint-code" not in text and "allow_pickle" not in text and "Traceback" not in text
    assert not (tmp_path / "PWNED").exists()


def test_a_length_field_beyond_the_file_is_an_unreadable_file(tmp_path):
    """The structure check itself read a string of the declared 2**62 bytes: a raw MemoryError
    (not an EntitySAMError) where torch's own reading says the file is unreadable."""
    path = tmp_path / "huge-length.pth"
    path.write_bytes(b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b"abc")
    with pytest.raises(CheckpointReadError, match="not a readable PyTorch checkpoint"):
        read_state_dict(path)


@pytest.mark.parametrize("text, start", [("c", "c"), ("c\n", "c"), ("cat", "cat"), ("continue\n", "continue"),
                                         ("cat\ndog\n", "cat"), ("cos\nsystem\n", "cos"),
                                         ("col1,col2\n1,2\n", "col1,col2"), ("config: x\n", "config: x")])
def test_a_text_file_starting_with_c_is_called_a_text_file(tmp_path, capsys, text, start):
    """"c" is pickle's GLOBAL opcode: torch's weights-only unpickler takes the next two lines (or
    what is left) as a global and refuses it before it finds the file ends, and a one-word text
    file "c" was "refusing to load checkpoint ...: it holds pickled Python objects (.)", with the
    advice to trust the file. Only names with a space or a colon were recognised as text."""
    path = tmp_path / "notes.pth"
    path.write_text(text)
    with pytest.raises(CheckpointReadError) as err:
        read_state_dict(path)
    assert not isinstance(err.value, UnsafeCheckpointError)
    assert str(err.value) == (f"cannot read checkpoint {path}: it is a text file (starting {start!r}), not a "
                              "checkpoint (torch.save writes binary files)")
    if text == "c":
        rc, stderr = _segment(path, tmp_path, capsys)
        assert rc == 1 and "it is a text file (starting 'c')" in stderr and "pickled" not in stderr
        assert "--trust-checkpoint-code" not in stderr and "Traceback" not in stderr


def test_a_whole_text_pickle_naming_a_global_is_still_refused_as_one(tmp_path):
    """A protocol-0 pickle is text too: one that reads through to its STOP stays refused as
    pickled objects (and nothing in it runs)."""
    import fractions
    import pickle

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    evil.write_text(f"cos\nsystem\n(S'touch {marker}'\ntR.")
    plain = tmp_path / "fraction.pth"
    plain.write_bytes(pickle.dumps(fractions.Fraction(1, 3), protocol=0))
    for path, name in ((evil, "os.system"), (plain, "fractions.Fraction")):
        with pytest.raises(UnsafeCheckpointError, match=rf"it holds pickled Python objects \({name}\) that could run"):
            read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_a_persistent_id_that_is_no_storage_is_an_unreadable_file_not_pickled_objects(saved, tmp_path, capsys,
                                                                                     legacy):
    """torch refuses a string as a persistent id naming its class ("but got <class 'str'>"), which
    was read as a refused class: "pickled Python objects (str) that could run code", with advice
    to pass allow_pickle=True, whose full unpickler fails too. Now it says what is wrong."""
    pickle = b"\x80\x02X\x07\x00\x00\x00storageQ."
    path = tmp_path / "persid.pth"
    if legacy:
        path.write_bytes(pickle)
    else:
        _rewrite(saved, path, pickle=pickle)
    with pytest.raises(CheckpointReadError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert type(err.value) is CheckpointReadError and "persistent_load id must be tuple or int" in message
    assert "could run code" not in message and "allow_pickle" not in message
    rc, text = _segment(path, tmp_path, capsys)
    assert rc == 1 and "persistent_load id must be tuple or int" in text and "--trust-checkpoint-code" not in text

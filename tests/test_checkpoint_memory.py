"""Checkpoints made by hand to make torch's weights-only unpickler allocate far more than their
size (its allow-list builds bytearrays, sets, tensors of any size; the pickle memo lets one string
be copied any number of times): each is refused from its opcodes, before anything is built.
Legitimate data of any size still loads."""

from __future__ import annotations

import codecs
import json
import os
import struct
import subprocess
import sys
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch

from _blocking import within
from _media import tiny_state_dict
from entitysam.checkpoints import read_checkpoint

OVER = "could make the unpickler allocate"
MiB = 1 << 20


class _Call:
    """Pickles as func(*args): how a hostile file calls what torch's allow-list holds."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile(kind: str):
    """(object to torch.save, what the refusal says). Sizes: what the old loader allocated for a
    file of at most a few MB (each at least 150 MB, resident; the tensor sizes only reserved)."""
    text = "a" * MiB  # pickled once, then referenced through the memo
    numbers = list(range(10**6, 10**6 + 100_000))
    return {
        "bytearray-size": (_Call(bytearray, 512 * MiB), "1 call of builtins.bytearray: 512 MiB"),
        "encode-from-memo": ([_Call(codecs.encode, text, "latin1") for _ in range(300)], "calls of _codecs.encode"),
        "bytearray-from-memo": ([_Call(bytearray, text, "latin1") for _ in range(300)], "calls of builtins.bytearray"),
        "set-from-memo": ([_Call(set, numbers) for _ in range(40)], "calls of builtins.set"),
        "counter-of-a-tensor": (_Call(Counter, torch.zeros(1).expand(300_000)), "1 call of collections.Counter"),
        "tensor-size": (_Call(torch.ByteTensor, 2**14, 2**16), "1 call of torch.ByteTensor: 1 GiB"),
        "tensor-of-nested-lists": (_Call(torch.ByteTensor, [[[1] * 100] * 100] * 1000), "with nested lists"),
        "codec-chain": (_Call(codecs.encode, _Call(codecs.encode, b"ab", "hex"), "hex"),
                        "with a codec or an error handler other than a plain text encoding"),
    }[kind]


KINDS = ["bytearray-size", "encode-from-memo", "bytearray-from-memo", "set-from-memo", "counter-of-a-tensor",
         "tensor-size", "tensor-of-nested-lists", "codec-chain"]


def _legacy_storage_bomb(path):
    """A legacy-format file whose one storage declares 2**28 floats (1 GiB) for 2 stored."""
    torch.save({"t": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    declared = b"X\x03\x00\x00\x00cpuq\x06K\x02N"  # location, numel 2, no view
    assert data.count(declared) == 1
    path.write_bytes(data.replace(declared, declared[:-3] + b"J" + struct.pack("<i", 2**28) + b"N"))
    return path


def _files(tmp_path):
    files = {}
    for kind in KINDS:
        obj, said = _hostile(kind)
        for legacy in (False, True):
            path = tmp_path / f"{kind}{'-legacy' if legacy else ''}.pth"
            torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
            assert path.stat().st_size < 4 * MiB
            files[path.name] = (path, said)
    files["legacy-storage.pth"] = (_legacy_storage_bomb(tmp_path / "legacy-storage.pth"), "1 legacy storage: 1 GiB")
    return files


_PROBE = """
import json, resource, sys
from entitysam.checkpoints import read_checkpoint
from entitysam.errors import CheckpointReadError
scale = 1 if sys.platform == "darwin" else 1024
read_checkpoint(sys.argv[1])  # warm: what any load allocates once
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
said = {}
for path in sys.argv[2:]:
    try:
        read_checkpoint(path)
        said[path] = "loaded"
    except CheckpointReadError as err:
        said[path] = str(err)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - before
print(json.dumps({"said": said, "grown": grown}))
"""


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """The hostile files, all read by one fresh process: what each load said, and how much the
    process's peak memory grew over them all."""
    tmp_path = tmp_path_factory.mktemp("memory")
    files = _files(tmp_path)
    warm = tmp_path / "warm.pth"
    torch.save({"model": tiny_state_dict()}, warm)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(warm), *(str(p) for p, _ in files.values())],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return files, json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", [f"{k}{s}.pth" for k in KINDS for s in ("", "-legacy")] + ["legacy-storage.pth"])
def test_a_checkpoint_that_would_allocate_far_more_than_its_size_is_refused(probed, name):
    """bytearray(512 MiB) from a few bytes; one 1 MiB string encoded 300 times through the memo
    (300 MiB from 1 MiB); sets of one memoised list; a Counter of a 300 000-element zero-stride
    tensor (a 0-d tensor each, ~700 bytes); tensors and legacy storages of a declared size; a
    tensor of nested memoised lists (3 GB and minutes of building from 10 KB); encode(b, "hex")
    chained (doubles at each call). All were loaded (1.5 to 3 GB measured); now refused, naming
    what was found, in both formats."""
    files, result = probed
    path, said = files[name]
    message = result["said"][str(path)]
    assert message.startswith(f"cannot read checkpoint {path}: it") and said in message, message
    assert "torch.save never writes" in message and len(message.splitlines()) == 1


def test_refusing_them_allocates_nothing_like_it(probed):
    """The process that refused all these files (1.5 GiB resident, had they loaded) grew by less
    than the smallest of them."""
    _, result = probed
    assert result["grown"] < 100 * MiB, result["grown"] / MiB


def test_millions_of_small_objects_are_refused_before_they_are_built(tmp_path):
    """Python's own size of each object is charged: a 12 MB list of 2 million empty dicts (6 bytes
    of opcodes each, 137 bytes built: the dict, its slot in the list, its memo entry) grew the loading
    process by 370 MiB. It is refused, and the walk that refuses it grew the process by 100 MiB (it
    stops at the 64 MiB floor, whatever the number of dicts past it)."""
    path = tmp_path / "dicts.pth"
    torch.save([{} for _ in range(2_000_000)], path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    warm = tmp_path / "warm.pth"
    torch.save({"model": tiny_state_dict()}, warm)
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(warm), str(path)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    message = result["said"][str(path)]
    assert "Python objects and entries" in message and "a checkpoint keeps its data in tensors" in message, message
    assert result["grown"] < 160 * MiB, result["grown"] / MiB


def test_the_check_takes_time_linear_in_the_file():
    """A memoised tuple of 200 000 items given to a call 200 000 times (a 2 MB pickle): a walk that
    looked at the tuple at each call would take 4e10 steps. Each call costs the walk once; what
    copies the tuple (torch.Size) is charged each time, and refused soon."""
    import pickle

    from entitysam.checkpoint_pickle import Budget, walk_pickle

    sizes = tuple(range(1000, 201_000))
    for func, args, refused in ((torch.device, sizes, None), (torch.Size, (sizes,), "calls of torch.Size")):
        calls = [_Call(func) for _ in range(200_000)]
        for call in calls:
            call.args = args  # one tuple: pickled once, then fetched from the memo
        data = pickle.dumps(calls, protocol=2)
        assert data.count(b"M\xe8\x03M\xe9\x03") == 1 and len(data) < 8 * MiB
        cause = within(60, walk_pickle, __import__("io").BytesIO(data), Budget(len(data)))
        assert (cause is None) if refused is None else (refused in cause), cause


@pytest.mark.parametrize("legacy", [False, True])
def test_legitimate_data_loads_whatever_its_size(tmp_path, legacy):
    """What torch.save writes for plain data is charged at most ~3 times its size (a bytearray: its
    text, the bytes encoded from it, the copy); 24 MiB of one (72 MiB charged, over the 64 MiB
    floor) loads, beside bytes, sets, Counters, OrderedDicts, complex numbers, numpy data and an
    optimizer state."""
    param = torch.nn.Parameter(torch.zeros(10))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.ones(10)
    optimizer.step()
    saved = {"model": tiny_state_dict(), "blob": bytearray(b"a" * (24 * MiB)), "bytes": bytes(range(256)) * 1000,
             "ids": set(range(100_000)), "counts": Counter("abracadabra"), "order": OrderedDict(a=1, b=2),
             "z": complex(1, 2), "array": np.arange(1000, dtype=np.float32), "iteration": np.int64(9999),
             "optimizer": optimizer.state_dict(), "size": torch.Size([3, 4])}
    path = tmp_path / "plain.pth"
    torch.save(saved, path, _use_new_zipfile_serialization=not legacy)
    got = read_checkpoint(path)
    assert got["blob"] == saved["blob"] and got["ids"] == saved["ids"] and got["counts"] == saved["counts"]
    assert got["bytes"] == saved["bytes"] and got["order"] == saved["order"] and got["size"] == saved["size"]
    assert np.array_equal(got["array"], saved["array"]) and got["optimizer"]["state"][0]["step"] == 1

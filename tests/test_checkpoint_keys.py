"""Pickles whose dict or set keys share one hash, made by hand: CPython compares each new key with
every earlier key of its hash, so building such a dict takes time growing with the square of its
keys (60 000 ints k * (2**61 - 1), a 780 KB file, kept the loader busy for minutes). Each is refused
by the walk, before torch builds anything; torch.save's own dicts of many keys still load."""

from __future__ import annotations

import io
import pickle
import struct
import sys
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch

from _blocking import within
from entitysam import cli
from entitysam.checkpoint_pickle import Budget, walk_pickle
from entitysam.checkpoints import read_checkpoint
from entitysam.errors import CheckpointReadError

P = (1 << 61) - 1  # ints k * P all hash to 0
SHARED = "holds dict or set keys that share their hash"
HASHED = "holds dict or set keys of over 16777216 tuple items in all"
N = 6000  # keys of one hash: 18 million comparisons, over the 2**24 allowed


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _marked(items: list[bytes], op: bytes) -> bytes:
    """items pushed in batches of 1000 (as pickle writes them), each batch closed by op (u, e)."""
    return b"".join(b"(" + b"".join(items[i:i + 1000]) + op for i in range(0, len(items), 1000))


def _dict_of(keys: list[bytes]) -> bytes:
    return b"}" + _marked([k + b"N" for k in keys], b"u")


def _call(module: str, name: str, args: bytes) -> bytes:
    return f"c{module}\n{name}\n".encode() + args + b"R"


def _solved_pairs(count: int) -> list[tuple[int, int]]:
    """Two-int tuples (a, b) of one hash: b solved from a through CPython's tuple hash (xxHash)."""
    mask, p1, p2, p5 = (1 << 64) - 1, 11400714785074694791, 14029467366897019727, 2870177450012600261
    rotl = lambda x, r: ((x << r) | (x >> (64 - r))) & mask  # noqa: E731
    target, pairs, a = 12345, [], 0
    want = rotl(((target - (2 ^ p5 ^ 3527539)) * pow(p1, -1, 1 << 64)) & mask, 33)  # before the last round
    while len(pairs) < count:
        a += 1
        acc = (rotl((p5 + a * p2) & mask, 31) * p1) & mask
        lane = ((want - acc) * pow(p2, -1, 1 << 64)) & mask
        b = lane - (1 << 64) if lane >> 63 else lane  # an int hashes to itself below P (but -1)
        if -P < b < P and b != -1:
            pairs.append((a, b))
    return pairs


def _shared_tuple(levels: int) -> bytes:
    """A tuple of 2**(levels+1) - 1 entries once walked out, each level holding the one below twice
    through the memo (memo index `levels`); the levels stay on the stack below."""
    return b")q\x00" + b"".join(bytes([0x68, i, 0x68, i, 0x86, 0x71, i + 1]) for i in range(levels))


def _hostile(kind: str) -> bytes:
    if kind == "ints":
        body = _dict_of([_int(k * P) for k in range(1, N + 1)])
    elif kind == "tuples-of-minus-one-and-two":  # hash(-1) == hash(-2): 4096 tuples of 12, one hash
        body = _dict_of([b"(" + b"".join(_int(-1 - (i >> j & 1)) for j in range(12)) + b"t" for i in range(4096)])
    elif kind == "solved-pairs":
        body = _dict_of([_int(a) + _int(b) + b"\x86" for a, b in _solved_pairs(N)])
    elif kind == "complex":  # hash(complex(a, b)) == hash(a) + 1000003 * hash(b)
        body = b"cbuiltins\ncomplex\nq\x01" + _dict_of([b"h\x01" + _int(1000003 * k) + _int(-k) + b"\x86R"
                                                         for k in range(2, N + 2)])  # (hash(-1.0) is -2)
    elif kind == "set-of-a-list":
        body = _call("builtins", "set", b"]" + _marked([_int(k * P) for k in range(1, N + 1)], b"e") + b"\x85")
    elif kind == "ordereddict-of-pairs":
        body = _call("collections", "OrderedDict", b"(" + b"".join(_int(k * P) + b"N\x86" for k in range(1, N + 1))
                     + b"t\x85")
    elif kind.startswith("ordereddict-built-of-a-"):  # BUILD: torch updates its __dict__ with the pairs
        pairs = b"".join(_int(k * P) + b"N\x86" for k in range(1, N + 1))
        state = {"list": b"](" + pairs + b"e", "tuple": b"(" + pairs + b"t",
                 "state-and-slotstate": b"(" + pairs + b"tN\x86"}[kind.rpartition("-a-")[2]]
        body = _call("collections", "OrderedDict", b")") + state + b"b"
    elif kind == "counters-of-one-dict":  # 2000 keys: 2 million comparisons, made again by each Counter
        counter = _call("collections", "Counter", b"}q\x02" + _marked([_int(k * P) + b"N" for k in range(1, 2001)],
                                                                      b"u") + b"\x85")
        body = b"]" + b"(" + counter + b"ccollections\nCounter\nq\x03" + b"h\x02\x85R" + b"h\x03h\x02\x85R" * 9 + b"e"
    elif kind == "storage-keys":  # torch keeps the storages it loads in a dict, by the key the pickle gives
        names = b"X\x07\x00\x00\x00storageq\x01ctorch\nFloatStorage\nq\x02X\x03\x00\x00\x00cpuq\x03"
        body = names + b"]" + _marked([b"(h\x01h\x02" + _int(k * P) + b"h\x03K\x00NtQ" for k in range(1, N + 1)], b"e")
    else:  # keys (t, i) of one tuple t of 524 287 entries: each insertion hashes it again
        body = _shared_tuple(18) + _dict_of([b"h\x12" + _int(i) + b"\x86" for i in range(40)])
    return b"\x80\x02" + body + b"."


KINDS = ["ints", "tuples-of-minus-one-and-two", "solved-pairs", "complex", "set-of-a-list", "ordereddict-of-pairs",
         "ordereddict-built-of-a-list", "ordereddict-built-of-a-tuple",
         "ordereddict-built-of-a-state-and-slotstate", "counters-of-one-dict", "storage-keys", "a-shared-tuple-hashed-again"]


@pytest.mark.parametrize("kind", KINDS)
def test_keys_of_one_hash_are_refused_before_they_are_built(kind):
    """Ints k * (2**61 - 1); tuples of -1 and -2 (which hash alike) in any order; two-int tuples
    solved for one hash; complex numbers; a set, an OrderedDict and Counters made of such keys
    (the Counters of one memoised dict, each making the comparisons again); storages of such keys
    (torch's loader keeps them in a dict); and keys holding one large tuple, hashed anew at each
    insertion. The walk refuses each, in a few seconds at most, in both formats."""
    if kind == "solved-pairs" and (sys.hash_info.width != 64 or sys.hash_info.algorithm.startswith("fnv")):
        pytest.skip("the pairs are solved for CPython's 64-bit tuple hash")
    data = _hostile(kind)
    for legacy in (False, True):
        cause = within(60, walk_pickle, io.BytesIO(data), Budget(len(data)), legacy=legacy)
        assert cause is not None and (HASHED if kind == "a-shared-tuple-hashed-again" else SHARED) in cause, cause
        assert "torch.save never" in cause or "cannot be known" in cause  # (torch.save writes what it is given)


def test_the_solved_pairs_do_share_one_hash():
    if sys.hash_info.width != 64:
        pytest.skip("64-bit hashes")
    assert len({hash(pair) for pair in _solved_pairs(50)}) == 1
    assert len({hash(complex(1000003 * k, -k)) for k in range(2, 50)}) == 1


def test_a_checkpoint_of_such_keys_is_one_line(tmp_path, capsys):
    """Through the loader and the command line: one line naming the file and the cause, exit 1."""
    path = tmp_path / "collide.pth"
    torch.save({"model": {k * P: torch.zeros(1) for k in range(1, N + 1)}}, path)
    with pytest.raises(CheckpointReadError, match=SHARED) as err:
        within(60, read_checkpoint, path)
    assert str(err.value).startswith(f"cannot read checkpoint {path}: its collide/data.pkl {SHARED}")
    legacy = tmp_path / "legacy.pth"
    torch.save({k * P: None for k in range(1, N + 1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointReadError, match=f"{legacy}: it {SHARED}"):
        within(60, read_checkpoint, legacy)
    still = tmp_path / "still.png"
    from PIL import Image

    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(still)
    rc = cli.main(["segment", str(still), "-o", str(tmp_path / "out"), "--checkpoint", str(path), "-q"])
    text = capsys.readouterr().err
    assert rc == 1 and text.startswith("error: ") and SHARED in text and len(text.strip().splitlines()) == 1, text


def test_many_keys_torch_save_writes_still_load(tmp_path):
    """Keys of distinct hashes, however many: ints (the optimizer's state), floats, big ints,
    tuples, complex numbers, sets, Counters, OrderedDicts; numpy scalars (whose hashes the walk
    does not know, counted as one hash) up to a few thousand."""
    saved = {"ints": {i: None for i in range(100_000)}, "floats": {i / 7: i for i in range(20_000)},
             "big": {k * P + k: None for k in range(20_000)}, "tuples": {(i, -i, "a"): i for i in range(20_000)},
             "complex": {complex(i, 1): 0 for i in range(20_000)}, "set": set(range(-50_000, 50_000)),
             "tuple-set": {(i, i) for i in range(20_000)}, "counter": Counter(range(20_000)),
             "order": OrderedDict((i * 0.5, i) for i in range(20_000)), "minus": {-1: 0, -2: 0}}
    path = tmp_path / "keys.pth"
    torch.save(saved, path)
    assert within(120, read_checkpoint, path) == saved


def test_numpy_scalar_and_tensor_keys_torch_save_writes_load(tmp_path):
    """Keys of numpy scalars hash as the numbers they hold (np.int64(5) as 5), tensors in a tuple
    by identity: thousands of them load (they were counted as keys of one hash, and refused)."""
    numbers = [np.int64, np.uint8, np.int32, np.float16, np.float32, np.float64, np.complex64, np.bool_]
    saved = {"int64": {np.int64(i): i for i in range(N)}, "pairs": {(np.int64(i), "x"): i for i in range(4000)},
             "floats": {np.float64(i / 7): i for i in range(N)}, "big": {np.uint64(2**64 - 1 - i): 0 for i in range(N)},
             "complex": {np.complex128(complex(i, -i)): 0 for i in range(N)}, "nan": {np.float64("nan"): 0},
             "all": {t(i % 2 if t is np.bool_ else i): 0 for t in numbers for i in range(100)},
             "text": {np.str_(f"k{i}"): 0 for i in range(N)}}
    path = tmp_path / "numpy.pth"
    torch.save(saved, path)
    loaded = within(120, read_checkpoint, path)
    assert {k: v for k, v in loaded.items() if k != "nan"} == {k: v for k, v in saved.items() if k != "nan"}
    tensors = tmp_path / "tensors.pth"
    torch.save({"m": {(i, torch.zeros(1)): 0 for i in range(N)}}, tensors)
    assert len(within(120, read_checkpoint, tensors)["m"]) == N


def test_numpy_scalar_keys_of_one_hash_are_refused(tmp_path):
    """Their hashes known, numpy's complex numbers of one hash are refused as Python's are."""
    path = tmp_path / "np-complex.pth"
    torch.save({np.complex128(complex(1000003 * k, -k)): 0 for k in range(2, N + 2)}, path)
    with pytest.raises(CheckpointReadError, match=SHARED):
        within(60, read_checkpoint, path)


def test_legacy_view_keys_are_counted_with_the_storages():
    """A legacy persistent id's view (key, offset, size): torch keeps the view by its key in the
    dict of the storages."""
    head = b"X\x07\x00\x00\x00storageq\x01ctorch\nFloatStorage\nq\x02X\x01\x00\x00\x000q\x03X\x03\x00\x00\x00cpuq\x04"
    items = [b"(h\x01h\x02h\x03h\x04K\x00" + _int(k * P) + b"K\x00K\x00\x87tQ" for k in range(1, N + 1)]
    data = b"\x80\x02" + head + b"]" + _marked(items, b"e") + b"."
    cause = within(60, walk_pickle, io.BytesIO(data), Budget(len(data)), legacy=True)
    assert cause is not None and SHARED in cause, cause


def test_a_set_of_a_numpy_array_counts_its_scalars():
    """set(array) hashes each element, a numpy scalar: 3000 complex numbers of one hash, made
    from one array (the budget of a large file, which allows the set's memory)."""
    class Made:
        def __reduce__(self):
            return set, ((1e6 - 1000003 * np.arange(3000.0)) + 1j * np.arange(3000.0),)

    data = pickle.dumps([Made()], protocol=2)
    cause = within(60, walk_pickle, io.BytesIO(data), Budget(1 << 30))
    assert cause is not None and SHARED in cause, cause

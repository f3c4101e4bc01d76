"""torch.save zip archives made by hand so that Python's zipfile (which the structure check read)
and torch's own zip reader (miniz, which torch.load reads with) see different records: what was
checked was not what torch read. Each is refused before torch reads it; the files' bombs are
small here (200 MiB, where the same files made the loader take 6 GiB)."""

from __future__ import annotations

import re
import struct
import warnings
import zipfile

import pytest
import torch

from _media import tiny_state_dict
from entitysam import cli
from entitysam.checkpoints import read_checkpoint, read_state_dict
from entitysam.errors import CheckpointReadError

MiB = 1 << 20
# bytearray(200 MiB): 30 bytes
BOMB = b"\x80\x02cbuiltins\nbytearray\nJ" + struct.pack("<i", 200 * MiB) + b"\x85R."
OVER = "could make the unpickler allocate over 64 MiB (1 call of builtins.bytearray: 200 MiB)"
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # a central directory entry, before its name


def _stored(path, records) -> None:
    """An archive of (name, bytes) records, stored, in this order (a name twice if given twice)."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as out:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": what the test wants
        for name, data in records:
            out.writestr(zipfile.ZipInfo(name), data)


def _records(path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(r.filename, archive.read(r)) for r in archive.infolist()]


def _directory(data: bytes) -> tuple[int, int, list[tuple[list, bytes, bytes]]]:
    """The central directory of `data`: its offset, size and entries (fields, name, what follows the name)."""
    end = data.rindex(b"PK\x05\x06")
    size, offset = struct.unpack("<II", data[end + 12:end + 20])
    entries, at = [], offset
    while at < offset + size:
        fields = list(_CENTRAL.unpack(data[at:at + 46]))
        name_end = at + 46 + fields[10]
        after = fields[11] + fields[12]
        entries.append((fields, data[at + 46:name_end], data[name_end:name_end + after]))
        at = name_end + after
    return offset, size, entries


def _entry(fields, name, after=b"") -> bytes:
    return _CENTRAL.pack(*fields) + name + after


@pytest.fixture
def saved(tmp_path):
    torch.save({"model": tiny_state_dict()}, tmp_path / "good.pth")
    return tmp_path / "good.pth"


@pytest.mark.parametrize("kind, message", [("upper-case", OVER), ("beside", "holds a record name twice"),
                                           ("before", "holds a record name twice")])
def test_a_data_pkl_torch_finds_under_another_case_is_the_one_checked(saved, tmp_path, capsys, kind, message):
    """torch's reader finds a record whatever the case of its name's letters: an archive whose
    pickle was named good/DATA.PKL was not checked at all (no record named data.pkl), and of
    good/data.pkl and good/Data.pkl (a bomb) torch read the bomb. 6 GiB from a 2 MB file."""
    records = _records(saved)
    path = tmp_path / f"{kind}.pth"
    if kind == "upper-case":
        _stored(path, [(n.replace("data.pkl", "DATA.PKL"), BOMB if n.endswith("data.pkl") else d) for n, d in records])
    else:
        _stored(path, records + [("good/Data.pkl", BOMB)] if kind == "beside" else [("good/Data.pkl", BOMB)] + records)
    with pytest.raises(CheckpointReadError, match=re.escape(message)) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(f"cannot read checkpoint {path}: its ")
    if kind == "upper-case":
        from PIL import Image

        still = tmp_path / "still.png"
        Image.new("RGB", (64, 48), (90, 90, 90)).save(still)
        rc = cli.main(["segment", str(still), "-o", str(tmp_path / "out"), "--checkpoint", str(path), "-q"])
        text = capsys.readouterr().err
        assert rc == 1 and message in text and len(text.splitlines()) == 1 and "Traceback" not in text


def test_a_second_central_directory_before_the_archive_is_refused(saved, tmp_path):
    """Python's zipfile allows data before an archive: it finds the central directory by its size
    back from the end record. torch's reader takes it at the offset the end record gives, absolute.
    A copy of the directory there whose data.pkl is a bomb, ahead of the real archive, made the
    two read different pickles: the check passed the real one, torch unpickled the bomb."""
    data = saved.read_bytes()
    offset, size, entries = _directory(data)
    bomb = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, 0, 0, len(BOMB), len(BOMB), 13, 0)
    bomb += b"good/data.pkl" + BOMB
    ahead = offset + size  # the bytes before the archive: torch's directory at `offset` in them
    theirs = b""
    for fields, name, after in entries:
        if name == b"good/data.pkl":  # a comment keeps the entry's size (so the two directories' sizes agree)
            fields[7:10], fields[11:13], fields[16] = [0, len(BOMB), len(BOMB)], [0, len(after)], 0
            after = bytes(len(after))
        else:
            fields[16] += ahead
        theirs += _entry(fields, name, after)
    assert len(theirs) == size and len(bomb) <= offset
    path = tmp_path / "two-directories.pth"
    path.write_bytes(bomb + bytes(offset - len(bomb)) + theirs + data)
    with zipfile.ZipFile(path) as archive:  # Python's zipfile reads the real archive
        assert archive.read("good/data.pkl") == zipfile.ZipFile(saved).read("good/data.pkl")
    with pytest.raises(CheckpointReadError, match="reads differently to torch's zip reader than to Python's"):
        read_checkpoint(path)


def test_records_sharing_their_bytes_are_refused(tmp_path):
    """Directory entries data/1 ... data/63 pointing at data/0's bytes (torch's reader does not
    compare the names of local headers): torch read the one 1 MiB record 64 times. At 1500
    entries of 4 MiB, 6 GiB from a 4.5 MB file."""
    path = tmp_path / "shared.pth"
    torch.save({str(i): torch.zeros(MiB // 4) for i in range(64)}, path)
    data = path.read_bytes()
    offset, size, entries = _directory(data)
    first = next(fields for fields, name, _ in entries if name.endswith(b"/data/0"))
    directory = b""
    for fields, name, after in entries:
        if b"/data/" in name:
            fields = first[:10] + [len(name), 0, 0] + first[13:]
            after = b""
        directory += _entry(fields, name, after)
    end = data.rindex(b"PK\x05\x06")
    tail = data[end:end + 12] + struct.pack("<II", len(directory), offset) + b"\0\0"
    path.write_bytes(data[:offset] + directory + tail)  # (no zip64 records: the end record says it all)
    with pytest.raises(CheckpointReadError, match=re.escape("holds its record shared/data/0 in the bytes of its "
                                                            "record shared/data/1")):
        read_state_dict(path)


def test_archives_torch_save_writes_still_load(tmp_path):
    """A checkpoint of a non-ASCII name (torch names its folder "archive") and one of many records."""
    for name in ("modèle.pth", "many.pth"):
        path = tmp_path / name
        state = {"model": tiny_state_dict()} if name != "many.pth" else {str(i): torch.zeros(3) for i in range(3000)}
        torch.save(state, path)
        assert read_checkpoint(path).keys() == state.keys()


def test_a_record_name_flagged_utf8_that_is_not_is_a_damaged_archive(saved, tmp_path):
    """Python's zipfile raised a raw UnicodeDecodeError (no EntitySAMError; at the command line,
    "cannot load the checkpoint ...: UnicodeDecodeError: 'utf-8' codec can't decode ...")."""
    data = bytearray(saved.read_bytes())
    entry = data.index(b"PK\x01\x02")
    data[entry + 8] |= 0x08  # the flags' bit 11 (0x800): the name is UTF-8
    data[data.index(b"good/data.pkl", entry) + 5] = 0xFF
    path = tmp_path / "name.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointReadError, match=re.escape("a damaged zip archive (UnicodeDecodeError)")):
        read_checkpoint(path)

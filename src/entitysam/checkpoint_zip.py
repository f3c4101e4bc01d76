"""A ``torch.save`` zip archive read as torch's own reader reads it, before torch unpickles it.

* `count_records(f, size)`: ArchiveProblem where the archive holds over `MAX_RECORDS` records, by
  the count its end record declares (what torch's reader reads) or its central directory's entries
  (what Python's zipfile reads), before either builds its list of them: an archive of a million
  empty records (90 MB) took 58 s and 1.2 GB to load, zipfile's list alone 10 s and 500 MB.
* `torch_pickle(f, archive)`: the bytes of the data.pkl torch's reader would unpickle (None where
  that reader finds none, or fails, as torch.load then fails before unpickling anything), once the
  archive's records are known not to overlap and to be the same records to both readers;
  else `ArchiveProblem`, whose text is the cause ("holds a record name twice (...)").

Python's zipfile (which finds the records to check) and torch's reader (miniz, which torch.load
uses) read some archives differently, and what was checked was then not what torch read: miniz
finds a name whatever the case of its ASCII letters (an archive's ``a/DATA.PKL`` is its data.pkl,
and of ``a/data.pkl`` and ``a/Data.pkl`` it reads either), and it takes the central directory at
the offset the end record gives, where Python allows data before the archive (one file, two
central directories: Python's with the file's own pickle, torch's with another). Both made the
loader allocate 6 GiB from a 2 MB file past the check. And records sharing their bytes (1500
directory entries of one 4 MB record, which only miniz reads without complaint) made torch read
one file's data 1500 times: 6 GiB from 4.5 MB.
"""

from __future__ import annotations

import string
import struct
import zipfile
from typing import IO

from .errors import CheckpointReadError, printable

__all__ = ["MAX_STORAGES", "MAX_RECORDS", "ArchiveProblem", "count_records", "folded", "torch_pickle"]

# torch.save writes a record a tensor storage and six more: 1 479 for the published vit-l, about
# 4 500 for a training checkpoint with its optimizer's moments. A checkpoint of up to MAX_STORAGES
# storages is read, with room for the records besides them.
MAX_STORAGES = 100_000
MAX_RECORDS = MAX_STORAGES + 16

# sig, version, flags, method, time, date, crc, sizes: then the lengths of the name and extra field
_LOCAL = struct.Struct("<4s22xHH")
# the end record: signature, disk numbers, entries (this disk, in all), directory size and offset, comment
_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, offset of the zip64 end record, disks
_END64 = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries (this disk, in all), size, offset
_ENTRY = struct.Struct("<4s24x3H12x")  # a directory entry: signature, ..., lengths of name, extra field, comment
_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_NEVER = "torch.save never writes such an archive"


class ArchiveProblem(CheckpointReadError):
    """Why the archive is refused: `problem`, a phrase following "its zip archive"."""


def folded(name: str) -> str:
    """`name` as miniz compares names: its ASCII letters in lower case."""
    return name.translate(_FOLD)


def _name(record: zipfile.ZipInfo) -> str:
    return printable(record.filename, 80)


def _raw_name(record: zipfile.ZipInfo) -> bytes:
    """The name's bytes in the archive (Python decodes them by the record's UTF-8 flag)."""
    return record.orig_filename.encode("utf-8" if record.flag_bits & 0x800 else "cp437")


def _at(f: IO[bytes], offset: int, layout: struct.Struct, signature: bytes) -> tuple | None:
    f.seek(max(offset, 0))
    data = f.read(layout.size)
    return layout.unpack(data) if offset >= 0 and len(data) == layout.size and data[:4] == signature else None


def count_records(f: IO[bytes], size: int) -> None:
    """Raise ArchiveProblem where the archive holds over MAX_RECORDS records (see the module's docstring)."""
    tail_at = max(0, size - _END.size - 0xFFFF)  # where zipfile and miniz look for the end record
    f.seek(tail_at)
    tail = f.read() + bytes(_END.size)
    # the end record in the last bytes (zipfile's first look), the last one found (miniz's, zipfile's next)
    for end in {len(tail) - 2 * _END.size, tail.rfind(b"PK\x05\x06")}:
        if end < 0 or tail[end:end + 4] != b"PK\x05\x06":
            continue
        at, fields = tail_at + end, _END.unpack_from(tail, end)
        counts, directory, start = [fields[3], fields[4]], fields[5], at - fields[5]
        if locator := _at(f, at - _END64_LOCATOR.size, _END64_LOCATOR, b"PK\x06\x07"):
            # zip64: its end record before the locator (zipfile's), or where the locator says (miniz's)
            before = at - _END64_LOCATOR.size - _END64.size
            python, miniz = _at(f, before, _END64, b"PK\x06\x06"), _at(f, locator[2], _END64, b"PK\x06\x06")
            counts += [n for record in (python, miniz) if record for n in record[6:8]]
            if python:
                directory, start = python[8], before - python[8]
        if max(counts + [_walked(f, start, directory)]) > MAX_RECORDS:
            raise ArchiveProblem(f"holds over {MAX_RECORDS} records (torch.save writes one a tensor's storage and six "
                                 f"more: this tool reads checkpoints of at most {MAX_STORAGES} tensors; reading a list "
                                 "of millions of records alone could take minutes)")


def _walked(f: IO[bytes], start: int, directory: int) -> int:
    """How many entries zipfile reads of the central directory at `start`, of `directory` bytes
    (up to MAX_RECORDS + 1)."""
    f.seek(max(start, 0))
    count = total = 0
    while total < directory and count <= MAX_RECORDS:
        entry = f.read(_ENTRY.size)
        if len(entry) < _ENTRY.size or entry[:4] != b"PK\x01\x02":
            break  # zipfile refuses the archive
        skip = sum(_ENTRY.unpack(entry)[1:])
        f.read(skip)  # (not a seek: read through the file's buffer, an entry is some 100 bytes)
        count, total = count + 1, total + _ENTRY.size + skip
    return count


def _data_starts(f: IO[bytes], archive: zipfile.ZipFile) -> list[int]:
    """Where each record's data starts (after its local header), the records checked not to
    overlap each other nor the central directory."""
    records, starts = archive.infolist(), []
    for record in records:
        f.seek(record.header_offset)
        head = f.read(_LOCAL.size)
        if len(head) != _LOCAL.size or head[:4] != b"PK\x03\x04":
            raise ArchiveProblem(f"has no record {_name(record)} where its directory says ({_NEVER})")
        starts.append(record.header_offset + _LOCAL.size + sum(_LOCAL.unpack(head)[1:]))
    spans = sorted(((r.header_offset, start + r.compress_size, r) for r, start in zip(records, starts)),
                   key=lambda span: span[:2])
    for (_, end, record), (following, _, other) in zip(spans, spans[1:] + [(archive.start_dir, 0, None)]):
        if end > following:
            what = f"record {_name(other)}" if other is not None else "central directory"
            raise ArchiveProblem(f"holds its record {_name(record)} in the bytes of its {what} ({_NEVER}; "
                                 "torch would read the same bytes again for each, any number of times)")
    return starts


def torch_pickle(f: IO[bytes], archive: zipfile.ZipFile) -> bytes | None:
    """The data.pkl torch would unpickle (see the module's docstring)."""
    records = archive.infolist()
    names = [folded(r.filename) for r in records]
    if len(set(names)) != len(names):
        raise ArchiveProblem("holds a record name twice (torch.save never does; which one is read depends on "
                             "the reader, and torch's ignores the case of letters)")
    starts = _data_starts(f, archive)
    import torch  # noqa: PLC0415 - imported by whoever loads a checkpoint

    f.seek(0)  # as torch.load gives the file to the reader
    try:
        reader = torch._C.PyTorchFileReader(f)
        theirs = reader.get_all_records()  # (without the archive's folder: torch adds it back to each name)
    except (RuntimeError, ValueError):  # a name not in the archive's folder, not UTF-8: torch.load fails alike
        return None
    ours = [_raw_name(r) for r in records]
    folder = ours[0].partition(b"/")[0] + b"/" if ours else b""
    sized = hasattr(reader, "get_record_size")  # (torch 2.2 may not have it: then sizes are Python's)
    try:
        same = [folder + n.encode() for n in theirs] == ours and all(
            reader.get_record_offset(n) == start and (not sized or reader.get_record_size(n) == r.file_size)
            for n, r, start in zip(theirs, records, starts))
    except RuntimeError:
        same = False
    if not same:
        raise ArchiveProblem(f"reads differently to torch's zip reader than to Python's ({_NEVER}; what torch "
                             "would read could not be checked)")
    if not reader.has_record("data.pkl"):
        return None
    if not sized:
        return archive.read(records[names.index(folded(records[0].filename.partition("/")[0] + "/data.pkl"))])
    try:  # read as torch reads it, now known to be no larger than the record Python found
        return reader.get_record("data.pkl")
    except RuntimeError:
        return None

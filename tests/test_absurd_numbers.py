"""Absurd numbers on every numeric option (huge, denormal, zero, negative, NaN, infinities): each is
refused while the command line is parsed (one `error:` line, exit 2, nothing created, no model
loaded) or accepted and works to the end. The bounds, one per kind of number, are in
`entitysam.argtypes`; `--save none` and `--save ''` are here too (the other end of "a mistake is
refused before any work")."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from _media import write_frames
from entitysam import cli
from entitysam.argtypes import FPS_RANGE, INT64_MAX
from entitysam.errors import InvalidArgumentError
from entitysam.io.overlay import OverlayWriter, overlay_rate
from entitysam.pipeline.result import check_formats
from entitysam.sharding import balanced_split, parse_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HUGE = ["99999999999999999999999", "1e20", "1e300", "1e400", "inf"]
TINY = ["1e-320", "5e-324", "1e-310"]
BAD = ["nan", "-inf", "-1", "-1e300", "abc", ""]
FLOATS_OUT = HUGE + TINY + BAD + ["0", "-0", "99999999999"]  # a rate or duration out of its range
COUNTS_OUT = ["99999999999999999999999", "1e20", "1e300", "1e400", "inf", "1e-320", "nan", "-inf", "-1", "0",
              "0.5", "abc", ""]  # not an integer >= 1 within int64
THREADS_OUT = COUNTS_OUT + ["99999999999", "1025"]

SEGMENT = [  # option, extra flags, refused values
    ("--fps", (), FLOATS_OUT + ["0.0009", "1000.5"]),
    ("--fps", ("--online",), FLOATS_OUT),
    ("--threads", (), THREADS_OUT),
    ("--stride", (), COUNTS_OUT + [str(INT64_MAX + 1)]),
    ("--max-frames", (), COUNTS_OUT),
    ("--delay", ("--online",), [v for v in COUNTS_OUT if v != "0"]),
    ("--queue", ("--online",), COUNTS_OUT),
    ("--actors", ("--ray",), THREADS_OUT),
    ("--gpus-per-actor", ("--ray",), HUGE + TINY + ["nan", "-inf", "-1", "99999999999", "0.00001", "abc"]),
    ("--max-pixels", (), ["1e400", "inf", "1e-320", "nan", "-inf", "-1", "0", "0.5", "abc", ""]),
    ("--start", (), ["nan", "inf", "-1", "0.5", "1e20", "nans", "infs", "1e400s", "-1s", "-infs"]),
    ("--end", (), ["nan", "inf", "-1", "0.5", "1e20", "nans", "infs", "1e400s", "-1s"]),
    ("--shard", (), ["1/99999999999999999999", f"0/{INT64_MAX + 1}", "0/0", "-1/4", "4/4", "1/1e20", "nan/4",
                     "inf/4", "1/inf", "1/-inf", "0.5/2", "1e-320/2", "99999999999"]),
]
DEMO = [
    ("--frames", COUNTS_OUT + ["99999999999", "655361"]),
    ("--threads", THREADS_OUT),
    ("--seed", ["99999999999", str(2**32), "1e20", "1e-320", "nan", "inf", "-1", "0.5"]),
    ("--size", ["99999999999x32", "32x1e300", "0x0", "nanxnan", "infx32", "-1x32", "1e-320x32", "32x4097"]),
]
EVAL = [
    ("--threads", THREADS_OUT),
    ("--workers", THREADS_OUT),
    ("--dist-timeout", FLOATS_OUT + ["100001"]),
    ("--shard", ["1/99999999999999999999", "0/0", "nan/4", "1/inf"]),
]
OTHERS = [  # command line without the option, option, refused values
    (["view", "{tmp}/absent"], "--port", [v for v in COUNTS_OUT if v != "0"] + ["99999999999", "65536"]),
    (["export", "{tmp}/absent", "--format", "mots", "-o", "{tmp}/out"], "--class-id", COUNTS_OUT + ["66"]),
    (["export", "{tmp}/absent", "--format", "ytvis", "-o", "{tmp}/out"], "--video-id", COUNTS_OUT),
    (["metrics", "{tmp}/p", "{tmp}/g", "{tmp}/g.json"], "--workers", THREADS_OUT),
]


def cases(table):
    return [pytest.param(*row[:-1], v, id=f"{row[0]}={v}" + "".join(row[1]) if len(row) == 3 else f"{row[0]}={v}")
            for row in table for v in row[-1]]


def refused(capsys, argv, option):
    """cli.main(argv) in this process: exit 2 with one error line naming the option or its
    value; an exception (a traceback for a user) fails the test as itself."""
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(lines) == 1, err
    value = argv[-1].partition("=")[2]
    assert f"argument {option}" in lines[0] or option.lstrip("-") in lines[0] or repr(value) in lines[0], err


@pytest.mark.parametrize("option,extra,value", cases(SEGMENT))
def test_segment_refuses_absurd_numbers_before_any_work(tmp_path, capsys, option, extra, value):
    out = tmp_path / "out"
    refused(capsys, ["segment", tmp_path, "-o", out, "--checkpoint", tmp_path / "absent.pth", *extra,
                     f"{option}={value}"], option)
    assert not out.exists()


@pytest.mark.parametrize("option,value", cases(DEMO))
def test_demo_refuses_absurd_numbers_before_any_work(tmp_path, capsys, option, value):
    out = tmp_path / "demo"
    refused(capsys, ["demo", "-o", out, f"{option}={value}"], option)
    assert not out.exists()


@pytest.mark.parametrize("option,value", cases(EVAL))
def test_eval_refuses_absurd_numbers_before_any_work(tmp_path, capsys, option, value):
    out = tmp_path / "out"
    refused(capsys, ["eval", "vipseg", "--data-root", tmp_path, "-o", out, f"{option}={value}"], option)
    assert not out.exists()


@pytest.mark.parametrize("argv,option,value", [pytest.param(a, o, v, id=f"{a[0]} {o}={v}")
                                               for a, o, vs in OTHERS for v in vs])
def test_view_export_metrics_refuse_absurd_numbers(tmp_path, capsys, argv, option, value):
    refused(capsys, [a.format(tmp=tmp_path) for a in argv] + [f"{option}={value}"], option)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- accepted, and they work


@pytest.fixture(scope="module")
def frames(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("absurd")
    write_frames(d / "frames", ["0", "1", "2"])
    return d / "frames"


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
@pytest.mark.parametrize("extra", [("--fps", str(FPS_RANGE[0])), ("--fps", str(FPS_RANGE[1])),
                                   ("--stride", str(INT64_MAX)), ("--fps", "0.001", "--stride", str(INT64_MAX)),
                                   ("--max-frames", str(INT64_MAX)), ("--end", str(INT64_MAX)),
                                   ("--end", "1e300s"), ("--threads", "1"), ("--shard", f"1/{INT64_MAX}")],
                         ids=lambda e: " ".join(e))
def test_extreme_accepted_numbers_work(frames, tiny_checkpoint, tmp_path, capsys, online, extra):
    """The ends of each range run to a complete result with its overlay (--fps 1e-3 over a stride
    of 2**63 - 1 gives a rate below any the encoder represents: the overlay plays at 1/1000 fps)."""
    out = tmp_path / "out"
    rc = cli.main(["segment", str(frames), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "-q",
                   "--save", "panoptic,overlay", *(["--online"] if online else []), *extra])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "error" not in err
    if "--shard" not in extra:  # slice 1 of 2**63 - 1 of one video is empty
        assert (out / "frames" / ("overlay.ts" if online else "overlay.mp4")).stat().st_size > 0


def test_overlay_rate_stays_in_what_the_encoder_represents(tmp_path):
    assert overlay_rate(25) == 25 and overlay_rate(30000 / 1001) == Fraction(30000, 1001)
    for fps, rate in [(1e-22, Fraction(1, 1000)), (1e-320, Fraction(1, 1000)), (0.0004, Fraction(1, 1000)),
                      (1e20, 1000), (1e300, 1000), (float("inf"), 25), (float("nan"), 25), (0, 25), (-5, 25)]:
        assert overlay_rate(fps) == rate, fps
    image, ids = np.zeros((16, 16, 3), np.uint8), np.ones((16, 16), np.int32)
    for fps in (1e-22, 1e300):
        for streaming in (False, True):
            writer = OverlayWriter(tmp_path / f"o{streaming}", fps, streaming=streaming, timestamps=streaming)
            writer.add(image, ids, 0.0)
            writer.add(image, ids, 1.0)  # (times of live sources: seconds since the first frame)
            writer.close()


def test_shard_counts_within_int64_split_without_allocating_them():
    weights = [5, 1, 3, 3, 8]
    for count in range(1, 9):  # more slices than videos: the same split as the full algorithm's
        parts = [balanced_split(weights, i, count) for i in range(count)]
        assert sorted(k for p in parts for k in p) == list(range(5))
    assert [balanced_split(weights, i, 7) for i in range(7)] == [[4], [0], [2], [3], [1], [], []]
    assert balanced_split(weights, 1, INT64_MAX) == [0] and balanced_split(weights, INT64_MAX - 1, INT64_MAX) == []
    assert parse_shard(f"3/{INT64_MAX}") == (3, INT64_MAX)
    with pytest.raises(InvalidArgumentError, match="N must be at most"):
        parse_shard(f"0/{INT64_MAX + 1}")


# ----------------------------------------------------------------------------- --save none


def test_check_formats_one_rule():
    """A string names formats (an empty one is a mistake); a sequence is the formats themselves
    (empty: only manifest.json, as "none"); normalising twice changes nothing."""
    assert check_formats("none") == check_formats(["none"]) == check_formats(()) == check_formats([]) == ()
    assert check_formats(check_formats("all")) == check_formats("all")
    for text in ("", " ", ",", " , "):
        with pytest.raises(InvalidArgumentError, match="no output format given"):
            check_formats(text)


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_save_none_writes_only_the_manifest(frames, tiny_checkpoint, tmp_path, capsys, online):
    out = tmp_path / "out"
    rc = cli.main(["segment", str(frames), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "-q",
                   "--save", "none", *(["--online"] if online else [])])
    assert rc == 0, capsys.readouterr().err
    # online: entities.jsonl is always written (each line commits its frame)
    assert sorted(p.name for p in (out / "frames").iterdir()) == (["entities.jsonl", "manifest.json"] if online
                                                                  else ["manifest.json"])


def test_save_none_in_the_python_api(frames, tiny_model, tmp_path):
    from entitysam.pipeline.segment import segment

    with segment(tiny_model, frames) as result:
        for formats in ("none", (), ["none"]):
            final = result.save(tmp_path / f"r{len(str(formats))}", formats=formats)
            assert [p.name for p in final.iterdir()] == ["manifest.json"]


@pytest.mark.parametrize("option, value", [("num_actors", 10**30), ("num_actors", 0), ("gpus_per_actor", float("nan")),
                                           ("gpus_per_actor", 1e-5), ("cpus_per_actor", float("inf")),
                                           ("cpus_per_actor", 1e9), ("max_retries", 1.5)])
def test_ray_python_api_has_the_command_lines_bounds(tmp_path, option, value):
    """segment_many checks its numbers as --actors / --gpus-per-actor / --threads do, before Ray starts."""
    from entitysam.distributed.ray_runner import segment_many
    from entitysam.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=option):
        segment_many([tmp_path / "v.mp4"], tmp_path / "out", model="demo", device="cpu", **{option: value})
    assert not (tmp_path / "out").exists()

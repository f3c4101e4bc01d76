"""Which BLAS and oneDNN calls the official code and `--exact` make: the check that holds on CPUs you
do not have.

    python scripts/reference/kernel_trace.py --frames DIR [--steps 1] [--threads 2] [--work DIR] [--level aten]

On one machine the harness can only say that two runs agree on *that* machine's kernels. A float
kernel's result depends on the CPU path it takes, the thread count and the problem it is handed
(shapes, transposes, leading dimensions, memory layouts). The CPU path is the machine's; everything
else is the program's. So if `--exact` hands oneMKL and oneDNN the very calls the official code
hands them, in the same order, both programs get the same kernels on any CPU, and whatever those
kernels round, they round alike. This script runs `harness.py official` and `harness.py ours --mode
exact` with `MKL_VERBOSE=1` and `ONEDNN_VERBOSE=1`, keeps every call's problem description (times
and addresses dropped; each matrix address reduced to its offset within a 64-byte line, which
oneMKL's conditional reproducibility depends on), and reports the calls one run makes and the other
does not. f32-to-f32 reorders (exact copies) are left out: a layout difference that reaches a
kernel shows in that kernel's own memory descriptors.

What the libraries' logs do not show: the sizes inside a batched product (oneMKL prints the
addresses of a `cblas_sgemm_batch` call's size arrays, not the sizes, so those calls are compared by
their transposes and their number), the scalars (alpha, beta) of a call, and torch's own CPU kernels
(reductions, softmax, layer norm, elementwise maths, attention), whose results depend on the ISA
torch dispatches to (the same for both programs on one machine) and on shapes and strides. For
those, `--level aten` compares the ATen operator calls that can round instead (aten_trace.py):
each operand's dtype, shape, strides and offset within a 64-byte line, and every other argument.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import aten_trace  # noqa: E402
from official import NUM_WARMUP  # noqa: E402  the official code's warm-up copies of frame 0

_POINTER = re.compile(r"0x[0-9a-fA-F]+")
# SGEMM(transa, transb, m, n, k, alpha*, A, lda, B, ldb, beta*, C, ldc): the scalars' addresses are
# stack addresses of no consequence; the matrices' are kept as their offset within a cache line.
_SCALAR_ARGS = {"SGEMM": (5, 10), "DGEMM": (5, 10)}


def mkl_call(line: str) -> str | None:
    """`MKL_VERBOSE SGEMM(N,N,64,...) 12.3us CNR:OFF Dyn:1 FastMM:1 TID:0 NThr:2` -> its problem."""
    match = re.match(r"MKL_VERBOSE (\w+)\((.*)\) \S+ (.*)$", line.strip())
    if match is None:  # the version banner, or a line of another kind
        return None
    name, args, tail = match.groups()
    fields = args.split(",")
    for i in _SCALAR_ARGS.get(name, ()):
        if i < len(fields):
            fields[i] = "*"
    if name.endswith("_BATCH"):
        # cblas_?gemm_batch takes arrays of sizes and matrices: oneMKL prints only their addresses,
        # so a batched product is compared by its transposes alone (see the module docstring)
        fields = [_POINTER.sub("@", f) for f in fields]
    else:
        fields = [_POINTER.sub(lambda m: f"@{int(m.group(0), 16) % 64}", f) for f in fields]
    threads = re.search(r"NThr:(\d+)", tail)
    return f"{name}({','.join(fields)}) threads={threads.group(1) if threads else '?'}"


def onednn_call(line: str) -> str | None:
    """`onednn_verbose,v1,primitive,exec,cpu,<kind>,<impl>,...,<problem>,<ms>` -> all but the time;
    None for info lines and f32 -> f32 reorders."""
    fields = line.strip().split(",")
    if len(fields) < 8 or fields[0] != "onednn_verbose" or "exec" not in fields[2:4]:
        return None
    start = fields.index("exec") + 1
    fields = fields[start:-1]
    if len(fields) > 1 and fields[1] == "reorder" and _exact_copy(",".join(fields)):
        return None
    return "onednn " + ",".join(fields)


def _exact_copy(description: str) -> bool:
    dtypes = re.findall(r"(?:src|dst):(\w+):", description)
    return bool(dtypes) and len(set(dtypes)) == 1 and "attr-post-ops" not in description and "scales" not in description


# Calls one program makes that cannot change the other's results, with how many per step (or per
# run). Matched on the problem alone (no addresses, no thread count).
EXPLAINED = (
    ("official", "SGEMM(T,N,256,50,256,*,@,256,@,256,*,@,256)", 2, "step",
     "the mask decoder's cls_prediction_head (layers 1-2), whose output the official code never reads"),
    ("official", "SGEMM(T,N,2,50,256,*,@,256,@,256,*,@,2)", 1, "step",
     "the mask decoder's cls_prediction_head (layer 3), whose output the official code never reads"),
    ("official", "aten.addmm.default(f32[256]/(1)@, f32[50,256]/(256,1)@, f32[256,256]/(1,256)@)", 2, "step",
     "the mask decoder's cls_prediction_head (layers 1-2), whose output the official code never reads"),
    ("official", "aten.addmm.default(f32[2]/(1)@, f32[50,256]/(256,1)@, f32[256,2]/(1,256)@)", 1, "step",
     "the mask decoder's cls_prediction_head (layer 3), whose output the official code never reads"),
    *[("official", f"aten.{op}(f32[32,32,64]/(4096,128,2)@)", 2, "step",
       "the position encoding of the image encoder's lowest-resolution level, which SAM 2 drops unread")
      for op in ("sin.default", "cos.default")],
    *[("official", call, 1, "step",
       "the position encoding of the image encoder's lowest-resolution level, which SAM 2 drops unread")
      for call in ("aten.floor_divide.default(f32[128]/(1)@, 2.0)", "aten.pow.Scalar(10000.0, f32[128]/(1)@)")],
    ("exact", "SGEMM(T,N,2,2,4,*,@,4,@,4,*,@,2)", 1, "run",
     "this project's check at import that oneDNN's linear kernel works (modeling/common.py)"),
    ("exact", "onednn cpu,inner_product,*,mb2ic4oc2", 1, "run",
     "this project's check at import that oneDNN's linear kernel works (modeling/common.py)"),
)


def problem(call: str) -> str:
    """A call without its thread count and addresses, and a oneDNN call without its kernel name."""
    call = re.sub(r" threads=\S+$", "", without_alignment(call))
    if call.startswith("onednn "):
        fields = call.split(",")
        call = ",".join(fields[:2] + ["*"] + fields[-1:]) if len(fields) > 3 else call
    return call


def kernel_calls(text: str) -> list[str]:
    calls = []
    for line in text.splitlines():
        if line.startswith("MKL_VERBOSE"):
            call = mkl_call(line)
        elif line.startswith("onednn_verbose"):
            call = onednn_call(line)
        else:
            call = None
        if call is not None:
            calls.append(call)
    return calls


def without_alignment(call: str) -> str:
    return re.sub(r"@\d+", "@", call)


def differences(a: list[str], b: list[str]) -> tuple[Counter, Counter]:
    """Calls (with multiplicity) only in a, and only in b."""
    ca, cb = Counter(a), Counter(b)
    return ca - cb, cb - ca


def explain(only: Counter, who: str, steps: int) -> list[str]:
    """Remove from `only` the calls of EXPLAINED made by `who`; the lines saying what was removed."""
    removed = Counter()
    for owner, signature, count, per, reason in EXPLAINED:
        if owner != who:
            continue
        expected = count * (steps if per == "step" else 1)
        for call in [c for c in only if problem(c) == signature]:
            taken = min(only[call], expected)
            only[call] -= taken
            expected -= taken
            removed[reason] += taken
    return [f"  {who} x{n}: {reason}" for reason, n in removed.items() if n]


# Tables made from constants that the official code makes again at every use and this project
# once (cached while the weights stand): position encodings, rotary tables, interpolated position
# embeddings. A call of these kinds that this project also makes, on the same problem, computes the
# same table again. (Sine tables are recognised by their input, every other channel of the angles.)
TABLES = re.compile(r"aten\.(polar|pow\.Scalar|reciprocal|remainder\.Scalar|floor_divide|upsample_bicubic2d)[.(]"
                    r"|aten\.(sin|cos)\.default\(f32\[[\d,]+\]/\([\d*,]+,2\)@\)$")
# The memory encoder's sine table, which the official code makes for all Q memories of a step
# ([Q, g, g, m/4]) and this project once ([g, g, m/4]). Its input is strided (every other channel),
# so TensorIterator runs the scalar loop on every element: the batch cannot change an element.
_BATCHED_TABLE = re.compile(r"aten\.(sin|cos)\.default\(f32\[\d+,([\d,]+)\]/\(\d+,([\d,]+,2)\)@\)$")


def explain_tables(only_official: Counter, only_ours: Counter, ours: Counter, steps: int) -> list[str]:
    """Remove the official code's extra makings of TABLES (and the batched sine table, with this
    project's one making of it); the lines saying what was removed. When only step 0 is traced,
    the tables this project has not made yet are the memory's: the official code makes them as it
    encodes step 0's memory, this project as step 1 first reads it."""
    remade = batched = unread = 0
    for call in list(only_official):
        match = _BATCHED_TABLE.match(call)
        once = match and f"aten.{match.group(1)}.default(f32[{match.group(2)}]/({match.group(3)})@)"
        if TABLES.search(call) and ours.get(call):
            remade += only_official.pop(call)
        elif match and ours.get(once):
            batched += only_official.pop(call)
            only_ours.pop(once, None)
        elif steps == 1 and (match or TABLES.search(call)):
            unread += only_official.pop(call)
    lines = []
    if unread:
        lines.append(f"  official x{unread}: the memory's position tables, made with step 0's memory and first read "
                     "at step 1 (not traced), where this project makes them")
    if remade:
        lines.append(f"  official x{remade}: constant tables made again at each use (position encodings, rotary "
                     "tables, interpolated position embeddings), the same calls as this project's one making")
    if batched:
        lines.append(f"  official x{batched}: the memory encoder's sine table made for every query's memory, "
                     "elementwise on a strided input (one scalar loop per element), as this project makes it once")
    return lines


def explain_warmup_encodings(only_official: Counter, encoder: list[str], steps: int) -> list[str]:
    """The official code encodes frame 0 again (Hiera, DINOv2) on each warm-up copy of it, steps
    1-3; this project encodes it once. Same input, same calls: they cannot differ. Removes up to
    one encoding per warm-up step traced; the line saying how many calls that was."""
    again = max(0, min(steps, NUM_WARMUP + 1) - 1)
    removed = 0
    for call, n in Counter(without_alignment(c) for c in encoder).items():
        taken = min(only_official[call], n * again)
        only_official[call] -= taken
        removed += taken
    return [f"  official x{removed}: frame 0 encoded again on its warm-up copies (steps 1-{again}), "
            "the calls of this project's one encoding"] if removed else []


def report(official: list[str], ours: list[str], steps: int = 1, limit: int = 20,
           encoder: list[str] | None = None) -> bool:
    """Print the comparison; True when both programs hand the libraries the same problems
    (apart from the EXPLAINED calls and, given `encoder` (the calls of this project's encoding of
    frame 0), the official code's encodings of the warm-up copies)."""
    print(f"calls: official {len(official)}, exact {len(ours)}")
    only_official, only_ours = differences([without_alignment(c) for c in official],
                                           [without_alignment(c) for c in ours])
    explained = explain(only_official, "official", steps) + explain(only_ours, "exact", steps)
    if encoder:
        explained += explain_warmup_encodings(only_official, encoder, steps)
    explained += explain_tables(only_official, only_ours, Counter(without_alignment(c) for c in ours), steps)
    only_official, only_ours = +only_official, +only_ours
    if explained:
        print("calls made by one program only, which cannot change the other's results:")
        print("\n".join(explained))
    if not only_official and not only_ours:
        print("same problems: yes")
        # offsets compared where both runs make a problem equally often (not the explained calls)
        counts = [Counter(without_alignment(c) for c in run) for run in (official, ours)]
        equal = {p for p, n in counts[0].items() if counts[1].get(p) == n}
        moved = differences([c for c in official if without_alignment(c) in equal],
                            [c for c in ours if without_alignment(c) in equal])
        count = sum(moved[0].values())
        print(f"same offsets within a 64-byte line: {'yes' if not count else f'no ({count} calls differ)'}")
        for label, calls in zip(("official", "exact"), moved):
            for call, n in calls.most_common(limit):
                print(f"  {label} x{n}: {call}")
        return True
    print(f"same problems: NO ({sum(only_official.values())} calls only in the official run, "
          f"{sum(only_ours.values())} only in ours)")
    for label, calls in (("only official", only_official), ("only exact", only_ours)):
        for call, n in calls.most_common(limit):
            print(f"  {label} x{n}: {call}")
    return False


ENCODE_FRAME_0 = """
import sys, aten_trace, harness, official, torch
from PIL import Image
from entitysam.checkpoints import load_entitysam
from entitysam.inference.preprocess import preprocess_frame
frames, variant, seed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = load_entitysam(harness.make_state_dict(variant, seed))
with torch.inference_mode():
    image = preprocess_frame(Image.open(frames + "/" + official.frame_names(frames)[0]), model.cfg.image_size)
    with aten_trace.recording():
        model.encode_frame(image)
"""


def traced_encoding(args, log: Path) -> list[str]:
    """This project's encoding of frame 0 alone (its import-time check removed)."""
    return traced(args.level, [sys.executable, "-c", ENCODE_FRAME_0, str(args.frames), args.variant, str(args.seed),
                               str(args.threads)], log)


def traced_run(kind: str, args, log: Path) -> list[str]:
    cmd = [sys.executable, str(HERE / "harness.py"), kind, "--frames", str(args.frames), "--variant", args.variant,
           "--seed", str(args.seed), "--threads", str(args.threads), "--steps", str(args.steps),
           "--out", str(log.with_suffix(".npz"))]
    if kind == "ours":
        cmd += ["--mode", "exact"]
    return traced(args.level, cmd, log)


def traced(level: str, cmd: list[str], log: Path) -> list[str]:
    """Runs `cmd` with the libraries' logs (level "kernel") or the ATen trace (level "aten") on;
    the calls, also kept in `log`."""
    partial = log.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(HERE), os.environ.get("PYTHONPATH", "")]))
    if level == "aten":
        env[aten_trace.ENVIRONMENT] = str(partial)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    else:
        env.update(MKL_VERBOSE="1", ONEDNN_VERBOSE="1")
        with open(partial, "w") as out:
            subprocess.run(cmd, check=True, env=env, stdout=out)
    partial.replace(log)  # a stopped run is never reused as a whole trace
    return read_calls(level, log)


def read_calls(level: str, log: Path) -> list[str]:
    text = log.read_text()
    return aten_trace.calls(text) if level == "aten" else kernel_calls(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", required=True, type=Path, help="folder of JPEG frames")
    parser.add_argument("--variant", default="vits")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1, help="steps traced (default: step 0 only)")
    parser.add_argument("--work", type=Path, help="folder for the traces (reused when present)")
    parser.add_argument("--level", choices=("kernel", "aten"), default="kernel",
                        help="oneMKL and oneDNN calls (default), or the ATen operators that round (aten_trace.py)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="entitysam-trace-"))
    work.mkdir(parents=True, exist_ok=True)
    traces = {}
    prefix = "aten-" if args.level == "aten" else ""
    for kind, name in (("official", "official"), ("ours", "exact")):
        log = work / f"{prefix}{name}-s{args.steps}-t{args.threads}.log"
        traces[name] = read_calls(args.level, log) if log.exists() else traced_run(kind, args, log)
    encoder = None
    if args.steps > 1:
        log = work / f"{prefix}encoding-t{args.threads}.log"
        encoder = read_calls(args.level, log) if log.exists() else traced_encoding(args, log)
        encoder = [c for c in encoder if problem(c) not in {e[1] for e in EXPLAINED}]
    print(f"traces in {work}")
    return 0 if report(traces["official"], traces["exact"], args.steps, encoder=encoder) else 1


if __name__ == "__main__":
    raise SystemExit(main())

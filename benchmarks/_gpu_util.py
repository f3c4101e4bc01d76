"""Plumbing of benchmarks/gpu.py: the run context (device, budgets, caches), timing with CUDA
events, FLOP counting, model and clip building, and guards for the batched-path API."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import math
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = {"vit-s": "manifest-vits.json", "vit-l": "manifest-vitl.json"}
VARIANT_MODELS = {"vits": "vit-s", "vitl": "vit-l", "tiny": "tiny"}  # meta.json "variant" -> config


class SectionTimeout(Exception):
    """A section ran past its time budget (raised by the watchdog or a budget check)."""


class MissingAPI(RuntimeError):
    """The installed entitysam lacks an argument of the batched device path."""


@dataclass
class Ctx:
    """What every section sees: the parsed options, the device and per-run caches."""

    args: Any
    device: torch.device
    start: float = field(default_factory=time.perf_counter)
    section_deadline: float = math.inf
    cache: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def batched(self) -> bool:
        """The path the run asks for: --batched / --per-query, else batched off the CPU (as
        EntityTracker(batched=None) decides)."""
        return self.device.type != "cpu" if self.args.batched is None else self.args.batched

    def left(self) -> float:
        """Seconds left in the current section."""
        return self.section_deadline - time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f}s] {msg}", flush=True)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


# ----------------------------------------------------------------------------- budgets


@contextlib.contextmanager
def watchdog(seconds: float):
    """Raise SectionTimeout in the main thread after `seconds` (a section stuck in Python code or
    in a long run of kernels cannot hold the whole benchmark past its budget)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise SectionTimeout(f"stopped by the watchdog after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------- timing


def measure(ctx: Ctx, fn: Callable[[], Any], reps: int | None = None, warmup: int | None = None,
            wall: bool = False) -> dict:
    """Milliseconds of `fn()`: `warmup` untimed calls, then up to `reps` timed ones (fewer when the
    section's budget runs out, at least 2). On CUDA each call is timed with a pair of events
    (device time of the work it queued) unless `wall`; on CPU, or with `wall`, by the clock
    around the call and a synchronisation."""
    reps = reps or ctx.args.reps
    for _ in range(ctx.args.warmup if warmup is None else warmup):
        fn()
    ctx.sync()
    times = []
    for i in range(reps):
        if ctx.cuda and not wall:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            ctx.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        if i >= 1 and ctx.left() < 0:
            break
    return dict(ms=statistics.median(times), ms_min=min(times), reps=len(times))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call as torch's FlopCounterMode counts them (matmuls, convolutions, SDPA)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class Probe:
    """Times named callables inside a larger call without adding synchronisations: a pair of CUDA
    events (clock readings on CPU) around every call, read once the whole call is done."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.pending: list[tuple[str, Any, Any]] = []
        self.restore: list[Callable[[], None]] = []
        self.counting = False  # count FLOPs per name instead of timing
        self.flops: dict[str, int] = {}

    def mark(self):
        if self.ctx.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Replace owner.attr (a bound method or a module's forward) by a timed instance attribute."""
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            if self.counting:
                with FlopCounterMode(display=False) as counter:
                    out = fn(*args, **kwargs)
                self.flops[name] = self.flops.get(name, 0) + int(counter.get_total_flops())
                return out
            start = self.mark()
            out = fn(*args, **kwargs)
            self.pending.append((name, start, self.mark()))
            return out

        setattr(owner, attr, timed)
        self.restore.append(lambda: delattr(owner, attr))

    def collect(self) -> dict[str, float]:
        """Milliseconds per name since the last collect (calls of one name summed)."""
        self.ctx.sync()
        out: dict[str, float] = {}
        for name, start, end in self.pending:
            ms = start.elapsed_time(end) if self.ctx.cuda else (end - start) * 1e3
            out[name] = out.get(name, 0.0) + ms
        self.pending.clear()
        return out

    def close(self) -> None:
        for undo in reversed(self.restore):
            undo()
        self.restore.clear()


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for float32 matmuls and convolutions on or off (the legacy flags, set together so that
    torch never sees a mix of the legacy and the new precision API)."""
    matmul = torch.backends.cuda.matmul
    try:
        saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # someone used the new API: leave it as found afterwards
        saved = None
    matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        if saved is not None:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def sdpa_backend(name: str):
    """A context restricting scaled_dot_product_attention to one backend ('auto': no restriction)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    return sdpa_kernel([backend])


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


# ----------------------------------------------------------------------------- the lead's API


def new_kwargs(fn: Callable, name: str, value: Any, old_behaviour: bool) -> dict:
    """{name: value} when `fn` takes the keyword; {} when it does not but the value asks for what
    the old code does anyway (`old_behaviour`); else MissingAPI with what to do."""
    params = inspect.signature(fn).parameters
    if name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {name: value}
    if old_behaviour:
        return {}
    where = getattr(fn, "__qualname__", repr(fn))
    raise MissingAPI(f"{where} has no `{name}=` argument: this entitysam predates the batched device path "
                     "(update the checkout to a main that has it), or time the per-query path with --per-query")


def batched_kwargs(ctx: Ctx, fn: Callable, value: Any = "resolved") -> dict:
    """`batched=` for fn (EntityTracker, pipeline segment(): the option as given; model methods: resolved)."""
    value = ctx.batched if value == "resolved" else value
    return new_kwargs(fn, "batched", value, old_behaviour=not ctx.batched)


# ----------------------------------------------------------------------------- inputs


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkpoint_path(ctx: Ctx, name: str, seed: int) -> Path:
    """A .pth of `name` with make_weights.py weights (tiny: seeded initialisation), made once into
    the cache folder."""
    path = Path(ctx.args.cache_dir) / f"esam_{name}_{seed}.pth"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if name == "tiny":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from inference import build_model

        state = build_model("tiny", seed).state_dict()
    else:
        reference = Path(ctx.args.reference_dir)
        make_weights = _load_module("make_weights", reference / "make_weights.py")
        state = make_weights.make_state_dict(json.loads((reference / MANIFESTS[name]).read_text()), seed)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": state}, tmp)
    tmp.replace(path)
    ctx.log(f"weights {name} seed {seed} -> {path} ({time.perf_counter() - t0:.1f} s)")
    return path


def get_model(ctx: Ctx, name: str, seed: int | None = None):
    """The model on the run's device, loaded through the public loader (cached per name and seed)."""
    seed = ctx.args.seed if seed is None else seed
    key = ("model", name, seed)
    if key not in ctx.cache:
        from entitysam.pipeline.loading import from_checkpoint

        ctx.cache[key] = from_checkpoint(checkpoint_path(ctx, name, seed), config=name, device=ctx.device).eval()
    return ctx.cache[key]


def make_frames(ctx: Ctx, n: int) -> list[np.ndarray]:
    """n frames of moving textured ellipses at the run's clip size (cached)."""
    key = ("frames", n)
    if key not in ctx.cache:
        from inference import make_clip

        ctx.cache[key] = list(make_clip(n, height=ctx.args.height, width=ctx.args.width))
    return ctx.cache[key]


def device_images(ctx: Ctx, model, n: int) -> list[torch.Tensor]:
    """n preprocessed frames already on the device (the steady-state timings exclude decoding)."""
    from entitysam.inference.preprocess import preprocess_frame

    key = ("images", model.cfg.image_size, n)
    if key not in ctx.cache:
        ctx.cache[key] = [preprocess_frame(f, model.cfg.image_size).to(ctx.device) for f in make_frames(ctx, n)]
    return ctx.cache[key]


def write_clip(ctx: Ctx, n: int) -> Path:
    """An H.264 mp4 of n generated frames (PyAV), made once into the cache folder."""
    import av

    path = Path(ctx.args.cache_dir) / f"clip_{ctx.args.width}x{ctx.args.height}_{n}.mp4"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("tmp-" + path.name)
    for codec in ("libx264", "mpeg4"):  # H.264 as users have; MPEG-4 part 2 if this FFmpeg lacks x264
        try:
            with av.open(str(tmp), "w") as container:
                stream = container.add_stream(codec, rate=Fraction(25))
                stream.width, stream.height, stream.pix_fmt = ctx.args.width, ctx.args.height, "yuv420p"
                for frame in make_frames(ctx, n):
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            break
        except (av.error.FFmpegError, ValueError) as err:
            ctx.log(f"clip: {codec} failed ({first_line(err)})")
    else:
        raise RuntimeError("could not encode the test clip with libx264 or mpeg4")
    tmp.replace(path)
    return path


if __name__ == "__main__":  # a helper module, not a script: say so instead of exiting 0 having done nothing
    raise SystemExit("_gpu_util.py is a helper module of benchmarks/gpu.py: run python benchmarks/gpu.py --help")

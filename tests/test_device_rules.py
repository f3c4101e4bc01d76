"""Rules of GPU backends that a CPU never enforces, played out on the CPU.

* CUDA's stream and event rules, for the copies the device path queues (below);
* MPS (Apple GPUs) has no float64: the device path must make no float64 device tensor.


On a GPU a non-blocking copy to pinned host memory runs on the current stream of the tensor's
own device, and an event recorded with no stream marks the current stream of the *current*
device. With `--device cuda:1` the current device is still 0: an event recorded there does not
wait for the copy, and the host reads the buffer before the GPU has filled it. Nothing on a
CPU-only machine shows that, so the rules are played out here: a queued copy lands in its host
buffer only when an event on a stream of its own device is waited for.
"""

from types import SimpleNamespace

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import numpy as np
import pytest
import torch

from entitysam.config import get_config
from entitysam.inference.tracker import EntityTracker
from entitysam.inference.video import LogitStore
from entitysam.modeling.entitysam import EntitySAM


class EmulatedCuda:
    """The current device, the copies queued per device, streams and events."""

    def __init__(self, current: int = 0):
        self.current = current
        self.queued: dict[int, list] = {}

    def current_stream(self, device=None):
        index = self.current if device is None or torch.device(device).index is None else torch.device(device).index
        return SimpleNamespace(device_index=index)

    def event_class(self):
        cuda = self

        class Event:
            stream = None

            def record(self, stream=None):
                self.stream = stream if stream is not None else cuda.current_stream()

            def synchronize(self):
                assert self.stream is not None, "waited for an event never recorded"
                for land in cuda.queued.pop(self.stream.device_index, []):
                    land()

        return Event


class DeviceLogits:
    """Logits on a GPU: all that `LogitStore.append` reads of them."""

    def __init__(self, values: torch.Tensor, device: str):
        self.values, self.device = values, torch.device(device)
        self.shape, self.dtype = values.shape, values.dtype

    def reshape(self, shape):
        return DeviceLogits(self.values.reshape(shape), str(self.device))


def pinned_empty(cuda: EmulatedCuda, real_empty):
    def empty(shape, dtype=None, pin_memory=False):
        host = real_empty(shape, dtype=dtype).fill_(float("nan"))  # what an unfilled buffer may hold

        def copy_(source, non_blocking=False):
            assert non_blocking and isinstance(source, DeviceLogits)
            cuda.queued.setdefault(source.device.index, []).append(lambda: host.copy_(source.values))
            return host

        buffer = SimpleNamespace(copy_=copy_, cpu=lambda: host, shape=host.shape)
        return buffer if pin_memory else host

    return empty


@pytest.mark.parametrize("logits_device", ["cuda:0", "cuda:1"])  # a CUDA tensor always names its GPU
def test_logits_copied_from_any_gpu_reach_the_store_complete(tmp_path, monkeypatch, logits_device):
    cuda = EmulatedCuda(current=0)
    monkeypatch.setattr(torch.cuda, "current_stream", cuda.current_stream)
    monkeypatch.setattr(torch.cuda, "Event", cuda.event_class())
    monkeypatch.setattr(torch, "empty", pinned_empty(cuda, torch.empty))
    frames = [torch.randn(3, 4, 4) for _ in range(4)]
    store = LogitStore(tmp_path, num_queries=3, size=4)
    for values in frames:
        store.append(DeviceLogits(values.reshape(3, 1, 4, 4), logits_device))
    store.close()
    written = np.asarray(store.frames())
    assert not np.isnan(written).any(), "the store read a host buffer before its copy from the GPU landed"
    np.testing.assert_array_equal(written, torch.stack(frames).numpy())


class DeviceFloat64(TorchDispatchMode):
    """Notes every operation that reads or makes a float64 tensor on the `meta` device (the
    stand-in for a GPU: host tensors stay on the CPU)."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "meta" and t.dtype in (torch.float64,
                                                                                       torch.complex128):
                self.ops.add(str(func))
        return out


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16], ids=["float32", "bfloat16", "float16"])
def test_device_steps_make_no_float64_tensor(dtype):
    """MPS refuses float64 ("Cannot convert a MPS Tensor to float64 dtype"): the first step and
    steps that read memory, on the device path, in every compute dtype."""
    cfg = get_config("tiny")
    with torch.device("meta"):
        model = EntitySAM(cfg).eval()
    tracker = EntityTracker(model, memory_dtype=torch.float16 if dtype == torch.float16 else None)
    assert tracker.batched
    image = torch.empty(1, 3, cfg.image_size, cfg.image_size, device="meta")
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    with DeviceFloat64() as seen, autocast:
        for t in range(3):
            tracker.step(t, image)
    assert not seen.ops, f"float64 on the device: {sorted(seen.ops)}"


@pytest.mark.parametrize("capability, hip, expected", [
    ((7, 5), None, torch.float16),    # T4: bfloat16 only emulated
    ((7, 0), None, torch.float16),    # V100
    ((8, 0), None, torch.bfloat16),   # A100
    ((9, 0), None, torch.bfloat16),   # H100 / H200
    ((9, 4), "6.2", torch.bfloat16),  # a ROCm build reports no CUDA capability that means this
])
def test_auto_precision_follows_the_gpus_bfloat16_units(monkeypatch, capability, hip, expected):
    """`--dtype auto` on a GPU: the official bfloat16 where the hardware has it; on older GPUs,
    which pass torch's bfloat16 check by emulating it, float16."""
    from entitysam.inference.precision import memory_dtype_for, resolve_dtype

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert resolve_dtype("auto", torch.device("cuda", 1)) == expected
    assert resolve_dtype(None, torch.device("cuda", 1)) == expected
    assert all(torch.device(d).index == 1 for d in asked), "asked another GPU than the one used"
    assert resolve_dtype("bfloat16", torch.device("cuda", 1)) == torch.bfloat16  # asked for: allowed
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert memory_dtype_for(expected) == (torch.float16 if expected == torch.float16 else None)


# ------------------------------------------------------------------ TF32 switches of float32 on CUDA

_PRECISION = [("fp32_precision", ()), ("fp32_precision", ("cuda", "matmul")), ("fp32_precision", ("cudnn",)),
              ("fp32_precision", ("cudnn", "conv")), ("fp32_precision", ("cudnn", "rnn"))]  # parents first


def _precision_owner(path):
    owner = torch.backends
    for part in path:
        owner = getattr(owner, part)
    return owner


def _precision_settings() -> list[str]:
    return [getattr(_precision_owner(path), name) for name, path in _PRECISION]


@pytest.fixture
def program_precision():
    """torch's float32 precision settings (process-wide), put back after the test."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch before 2.9 has only the allow_tf32 flags")
    before = _precision_settings()
    legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    matmul = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = legacy[1]  # (the older cuDNN flag has no other setter)
    for (name, path), value in zip(_PRECISION, before):
        setattr(_precision_owner(path), name, value)
    assert _precision_settings() == before
    # readable again: later tests (and torch itself) may read the older flags
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == legacy


@pytest.mark.parametrize("setting", [
    "torch.backends.cuda.matmul.fp32_precision = 'tf32'",  # the way torch recommends since 2.9
    "torch.backends.fp32_precision = 'tf32'",
    "torch.backends.fp32_precision = 'ieee'",
    "torch.backends.cudnn.fp32_precision = 'ieee'",
    "torch.backends.cuda.matmul.fp32_precision = 'ieee'",
    "torch.backends.cuda.matmul.allow_tf32 = False",       # the older flags
    "torch.set_float32_matmul_precision('high')",
    "pass",
])
def test_float32_on_cuda_runs_with_tf32_however_the_program_set_it_and_puts_it_back(program_precision, setting):
    """`dtype="float32"` on CUDA switches TF32 on for the video and restores the caller's
    setting. It read and wrote the older `allow_tf32` flags, and torch raises a RuntimeError on
    reading those once a program has used the newer `fp32_precision` settings: segment() failed
    before the first frame. The flags are plain process state on a CPU build too."""
    from entitysam.inference.precision import precision_plan

    exec(setting)
    before = _precision_settings()
    on_gpu = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda", 1))]))
    context, _ = precision_plan(on_gpu, torch.float32)
    with context:
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert _precision_settings() == before
    exact, _ = precision_plan(on_gpu, torch.float32, exact=True)  # exact: untouched
    with exact:
        assert _precision_settings() == before


_OLDER_READERS = {"torch.get_float32_matmul_precision()": ("high", "medium"),
                  "torch.backends.cuda.matmul.allow_tf32": (True,),
                  "torch.backends.cudnn.allow_tf32": (True,)}  # -> what each says with TF32 on


def _readable(expression: str) -> bool:
    try:
        eval(expression)
    except RuntimeError:  # torch's "mix of the legacy and new APIs"
        return False
    return True


@pytest.mark.parametrize("setting", [
    "pass",                                                # a program that never touched them
    "torch.backends.cuda.matmul.fp32_precision = 'ieee'",
    "torch.backends.fp32_precision = 'ieee'",
    "torch.backends.cudnn.conv.fp32_precision = 'ieee'",   # (a mix already: cudnn's older flag raises)
    "torch.backends.cuda.matmul.allow_tf32 = False",
    "torch.backends.cudnn.allow_tf32 = False",
])
def test_older_tf32_readers_still_read_while_a_float32_video_runs_on_cuda(program_precision, setting):
    """Inside the TF32 switch both of torch's views say TF32. It set only the newer
    `fp32_precision` settings, and torch raises on reads of the older view that disagree ("mix of
    the legacy and new APIs"): `torch.get_float32_matmul_precision()`, which torch.compile's
    autotuning reads, raised inside every float32 video on CUDA, even in a program that had set
    nothing (`compile_model(model, mode="max-autotune-no-cudagraphs")` then failed)."""
    from entitysam.inference.precision import precision_plan

    exec(setting)
    before = _precision_settings()
    readable = [expression for expression in _OLDER_READERS if _readable(expression)]
    on_gpu = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda", 0))]))
    context, _ = precision_plan(on_gpu, torch.float32)
    with context:
        assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "tf32"
        for expression in readable:
            assert eval(expression) in _OLDER_READERS[expression], expression
    assert _precision_settings() == before
    assert [expression for expression in _OLDER_READERS if _readable(expression)] == readable


# ------------------------------------------------------------------ the queries of a batch sized from free memory

class EmulatedGpuMemory:
    """One GPU's memory as torch reports it: the driver's free memory (which counts everything
    this process's caching allocator holds as taken), what the allocator holds, what tensors use.
    Answers only about `index`; notes which GPUs were asked about."""

    GIB = 2**30

    def __init__(self, index: int, total_gib: float, tensors_gib: float):
        self.index, self.total = index, int(total_gib * self.GIB)
        self.allocated = self.reserved = int(tensors_gib * self.GIB)
        self.others = 0  # bytes other processes hold on this GPU (e.g. Ray actors sharing it)
        self.asked: list = []

    def _which(self, device) -> int:
        self.asked.append(device)
        return torch.device(device).index if device is not None and torch.device(device).index is not None else 0

    def mem_get_info(self, device=None):
        free = self.total - self.reserved - self.others - (self.GIB // 2)  # less the CUDA context
        return (free, self.total) if self._which(device) == self.index else (self.total, self.total)

    def memory_reserved(self, device=None):
        return self.reserved if self._which(device) == self.index else 0

    def memory_allocated(self, device=None):
        return self.allocated if self._which(device) == self.index else 0


@pytest.mark.parametrize("name", ["vit-s", "vit-l"])
def test_later_videos_of_a_batch_get_the_query_batches_of_the_first(monkeypatch, name):
    """The device path's query chunk is sized from the GPU's free memory, asked before every
    video. The driver counts the memory this process's caching allocator keeps from the previous
    video as taken, although the next video reuses it: on a 24 GiB GPU the second video of a batch
    ran in chunks of queries (slower, and without the kept keys: other rounding) where the first
    ran all at once."""
    from entitysam.inference.tracker import default_query_chunk

    cfg = get_config(name)
    gpu = EmulatedGpuMemory(index=1, total_gib=24, tensors_gib=1.5)  # cuda:1, the model's weights on it
    for fn in ("mem_get_info", "memory_reserved", "memory_allocated"):
        monkeypatch.setattr(torch.cuda, fn, getattr(gpu, fn))
    device = torch.device("cuda", 1)
    first = default_query_chunk(cfg, device)
    gpu.reserved += 12 * gpu.GIB  # the first video's activations, freed into the allocator's cache
    assert default_query_chunk(cfg, device) == first is None
    gpu.allocated += 12 * gpu.GIB  # now held by tensors: no longer free
    assert default_query_chunk(cfg, device) is not None
    assert gpu.asked and all(torch.device(d) == device for d in gpu.asked), "asked about another GPU"


@pytest.fixture
def gpu_share():
    """set_gpu_share for one test, unset afterwards (the setting is per process)."""
    from entitysam.inference.device_memory import set_gpu_share

    yield set_gpu_share
    set_gpu_share(None)


def test_actors_sharing_a_gpu_get_the_same_query_batches_whatever_their_neighbours_hold(monkeypatch, gpu_share):
    """Four Ray actors on one 40 GiB GPU (`--gpus-per-actor 0.25`): the query chunk was sized from
    the free memory, which counts what the other three hold at that moment, so the same video ran
    in batches of 41 queries, or all 50 at once (with the kept keys), from one run to the next, and
    its results differed in the last bits. With a share, the chunk comes from the actor's quarter
    of the GPU less its own weights, whatever the neighbours hold."""
    from entitysam.inference.device_memory import default_query_chunk

    cfg = get_config("vit-l")
    gpu = EmulatedGpuMemory(index=0, total_gib=40, tensors_gib=1.5)  # the actor's weights
    for fn in ("mem_get_info", "memory_reserved", "memory_allocated"):
        monkeypatch.setattr(torch.cuda, fn, getattr(gpu, fn))
    device, weights = torch.device("cuda", 0), gpu.allocated

    def chunks() -> list:
        found = []
        for neighbours_gib in (0, 9, 25):
            gpu.others = neighbours_gib * gpu.GIB
            found.append(default_query_chunk(cfg, device, held=weights))
        return found

    assert len(set(chunks())) > 1, "the emulation no longer shows what the neighbours did"
    gpu_share(0.25)
    per_query = 162 * 2**20  # the estimate per query at the published sizes (counted twice below)
    expected = int((40 * gpu.GIB // 4 - weights) // (2 * per_query))
    assert chunks() == [expected] * 3 and 1 <= expected < cfg.num_queries
    gpu.reserved += 6 * gpu.GIB  # this actor's cache from its previous video changes nothing either
    assert default_query_chunk(cfg, device, held=weights) == expected


def test_a_gpu_share_is_a_fraction_of_one_gpu(gpu_share):
    from entitysam.distributed.ray_pool import ModelSpec
    from entitysam.inference.device_memory import gpu_share as current, weight_bytes

    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="GPU share"):
            gpu_share(bad)
    assert [ModelSpec.share_of(g) for g in (0, 0.25, 1, 2)] == [None, 0.25, None, None]
    ModelSpec("demo", device="cpu", gpu_share=0.5).load()  # what each Ray actor does first
    assert current() == 0.5
    assert weight_bytes(torch.nn.Linear(2, 3)) == (6 + 3) * 4


# ------------------------------------------------------------------ torch.use_deterministic_algorithms(True) on CUDA

class CudaDeterministicRefusals(TorchDispatchMode):
    """The forward operations that CUDA refuses under `torch.use_deterministic_algorithms(True)`
    (torch's list: they have no deterministic CUDA kernel and raise a RuntimeError there; on the
    CPU they run), noted for tensors on `meta`, the stand-in for a GPU."""

    def __init__(self):
        super().__init__()
        self.refused: set[str] = set()

    @staticmethod
    def _refused(func, args, kwargs) -> bool:
        name = func.overloadpacket.__name__
        first = args[0] if args else None
        if name in ("cumsum", "cumsum_", "_cumsum"):
            return first.is_floating_point() or first.is_complex()
        if name == "bincount":
            return (args[1] if len(args) > 1 else kwargs.get("weights")) is not None
        if name == "scatter_reduce":
            return args[3] == "prod"
        if name in ("median", "nanmedian"):
            return len(args) > 1 or "dim" in kwargs  # the forms that return indices
        return name in ("histc", "put_", "put", "nll_loss2d_forward", "max_unpool2d", "max_unpool3d")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_gpu = any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tree_flatten((args, kwargs))[0])
        if on_gpu and self._refused(func, args, kwargs):
            self.refused.add(str(func))
        return func(*args, **kwargs)


def test_device_path_runs_under_deterministic_algorithms_on_cuda():
    """Steps with and without memories, hole filling and the merge's per-pixel assignment, on the
    device path: every step raised on a GPU under torch.use_deterministic_algorithms(True) (the
    prompt encoder's position grid was a float cumsum)."""
    from entitysam.inference.merge_rules import area_counts, assign_pixels

    cfg = get_config("tiny")
    with torch.device("meta"):
        model = EntitySAM(cfg).eval()
    tracker = EntityTracker(model)
    image = torch.empty(1, 3, cfg.image_size, cfg.image_size, device="meta")
    logits = torch.empty(3, 2, 8, 8, device="meta")
    with CudaDeterministicRefusals() as rules:
        for t in range(3):
            tracker.step(t, image)
        ids, win_fg, fg_count = assign_pixels(logits, torch.rand(3).to("meta"), (20, 30), 0.5)
        area_counts(ids, win_fg, fg_count, 3)
    assert not rules.refused, f"no deterministic CUDA kernel: {sorted(rules.refused)}"


def test_position_grid_is_sams_cumsum_bit_for_bit():
    from entitysam.modeling.common import PositionEmbeddingRandom

    pe = PositionEmbeddingRandom(16)
    for h, w in [(64, 64), (8, 8), (3, 7), (1, 1)]:
        ones = torch.ones(h, w)
        sam = pe.encode(torch.stack([(ones.cumsum(1) - 0.5) / w, (ones.cumsum(0) - 0.5) / h], dim=-1)).permute(2, 0, 1)
        assert torch.equal(pe.grid(h, w), sam)


def test_a_gpu_the_machine_does_not_have_is_refused_by_name(monkeypatch):
    """`from_pretrained(device="cuda:5")` on a machine with 2 GPUs: one EntitySAMError before any
    download or load (was CUDA's "invalid device ordinal" from deep inside the first move)."""
    from entitysam.errors import EntitySAMError
    from entitysam.inference.precision import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(EntitySAMError, match=r"device cuda:5: this machine has 2 GPU\(s\) visible \(cuda:0 .. cuda:1\)"):
        resolve_device("cuda:5")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")

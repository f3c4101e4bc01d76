"""The CPU path's attention for one query (`RoPEAttention.attend_raw_values`) and its spreading of
queries over threads (`MemoryAttention._forward_per_query`): shaped for a few CPU cores' caches.
The device path uses `scaled_dot_product_attention` instead (`memory.attend_batched`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from .common import matmul_nt

__all__ = ["attend_float32", "attend_low_precision", "for_each_query"]


def attend_float32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """softmax(q k^T) v for q [N, C], k [M, C] (pre-scaled), v [M, Cv] -> float32 [N, Cv].

    `rows x cols` score blocks with a running softmax (as flash attention): a block stays in
    cache between the matmul that makes it and the matmul that consumes it. This order of
    operations is the one the float32 reference test was verified with; keep it.
    """
    # per key block: keys [c, C] and transposed values [Cv, c], both row-major for matmul_nt
    blocks = [(k[c:c + cols], v[c:c + cols].t().contiguous()) for c in range(0, k.shape[0], cols)]
    out = torch.empty(q.shape[0], v.shape[-1], dtype=torch.float32, device=q.device)
    for a in range(0, q.shape[0], rows):
        qa = q[a:a + rows]
        top = qa.new_full((qa.shape[0], 1), float("-inf"), dtype=torch.float32)  # running row max
        total = torch.zeros_like(top)  # running sum of weights
        acc = out[a:a + rows].zero_()  # running weighted sum of values
        for kb, vt in blocks:
            scores = matmul_nt(qa, kb).float()  # [r, c]
            new_top = torch.maximum(top, scores.amax(dim=-1, keepdim=True))
            weights = scores.sub_(new_top).exp_()
            rescale = (top - new_top).exp_()  # 0 on the first block
            total.mul_(rescale).add_(weights.sum(dim=-1, keepdim=True))
            acc.mul_(rescale).add_(matmul_nt(weights.to(vt.dtype), vt))
            top = new_top
        acc /= total
    return out


def attend_low_precision(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int) -> torch.Tensor:
    """softmax(q k^T) v in the dtype of q (bfloat16 / float16): q [N, C], k [M, C] (pre-scaled),
    v [M, Cv] -> [N, Cv].

    Whole score rows and torch's fused softmax, where float32 uses running statistics: on CPU
    the fused bfloat16 softmax is 2.5x faster than the float32 one, and the running
    max / rescale passes in float32 cost more than the score matmul itself (measured with
    the published sizes: 0.25 s instead of 0.36 s per query and layer with 7 memories). The
    softmax accumulates in float32 internally; its weights are rounded to the compute dtype
    once, as the running version rounds its unnormalised weights. A [rows, M] block
    (256 x 7 x 4096 in bfloat16: 15 MB) stays in the last-level cache.
    """
    out = torch.empty(q.shape[0], v.shape[-1], dtype=q.dtype, device=q.device)
    buffer = q.new_empty(min(rows, q.shape[0]), k.shape[0])  # reused: fresh large buffers fault pages in
    for a in range(0, q.shape[0], rows):
        qa = q[a:a + rows]
        scores = torch.matmul(qa, k.t(), out=buffer[:qa.shape[0]])
        # Under CUDA autocast softmax returns float32, and `out=` calls are never autocast:
        # the weights must be brought back to the operands' dtype explicitly.
        torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v, out=out[a:a + rows])
    return out


def for_each_query(fn: Callable[[int], None], count: int, device: torch.device) -> None:
    """fn(0), ..., fn(count - 1), independent of each other; on CPU, spread over one
    single-threaded worker per torch thread.

    Per query the memory attention is a chain of mid-sized operations (row blocks of matmuls,
    softmax, layer norms); splitting each of them over the threads costs a synchronisation
    per operation and leaves cores idle in the small ones. Whole queries on separate threads
    keep every core busy: measured 8% faster for the published sizes on 2 threads (6 queries,
    bfloat16, median of 3 runs). Each query's arithmetic is the same as on the calling thread
    (tested bit for bit). torch's thread count is process-wide: it is 1 while this runs and
    restored after. Grad mode and autocast are per thread, so the workers take the caller's.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or count < 2:
        for b in range(count):
            fn(b)
        return
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()
    autocast = torch.is_autocast_enabled("cpu")
    autocast_dtype = torch.get_autocast_dtype("cpu")

    def work(b: int) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
            fn(b)

    torch.set_num_threads(1)  # new threads read it when they first run a parallel op
    try:
        with ThreadPoolExecutor(max_workers=min(threads, count)) as pool:
            for future in [pool.submit(work, b) for b in range(count)]:
                future.result()
    finally:
        torch.set_num_threads(threads)

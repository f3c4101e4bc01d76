"""Exact mode hands the BLAS the official code's shapes and layouts, on every BLAS code path.

A matrix product may round a row differently with the number of rows or the layout of its
operand, depending on the kernel the BLAS picks. oneMKL picks kernels by CPU vendor: on an AMD
CPU it never takes its Intel paths, which is why exact mode once matched the official code on
AMD and not on an Intel Xeon (issue 19). Here those Intel paths are taken on any x86 CPU by
answering oneMKL's CPU detection (`mkl_serv_intel_cpu_true`, `mkl_serv_cpu_detect`) from a
preloaded library, and the entity decoder, the point encoding and the memory attention of exact
mode are compared bit for bit with the official code's choreography (ymq2017/entitysam,
`sam2/modeling/sam/transformer_query_iou.py`, `prompt_encoder.py` and `memory_attention.py`),
written out below, at the published sizes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from entitysam.config import get_config
from entitysam.modeling.decoder import NUM_GROUPS

INTEL_PATHS = {"native": None, "intel-avx2": 5, "intel-avx512": 7}  # oneMKL's CPU codes
NEEDS_FLAG = {"intel-avx2": "avx2", "intel-avx512": "avx512f"}  # the instructions each path runs


def cpu_flags() -> set[str]:
    """The first CPU's flags in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.partition(":")[2].split()) for line in text.splitlines() if line.startswith("flags")), set())

SHIM = r"""
#include <stdlib.h>
int mkl_serv_intel_cpu_true(void) { return 1; }
int mkl_serv_cpuiszen(void) { return 0; }
int mkl_serv_cpu_detect(void) { return atoi(getenv("ENTITYSAM_TEST_MKL_CPU")); }
"""


# ---------------------------------------------------------------- the official choreography

def official_block(layer, queries, keys, query_pe, key_pe):
    """`TwoWayAttentionBlock.forward` of transformer_query_iou.py: tokens [4Q, 1, C] as Q
    batches of 4 after the self-attention (split into 4 chunks and concatenated)."""
    queries, query_pe = queries.permute(1, 0, 2), query_pe.permute(1, 0, 2)
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q, q, queries)
    queries = layer.norm1(queries)
    queries, query_pe = queries.permute(1, 0, 2), query_pe.permute(1, 0, 2)
    split = queries.shape[0] // NUM_GROUPS
    queries = torch.cat([queries[i * split:(i + 1) * split] for i in range(NUM_GROUPS)], dim=1)
    query_pe = torch.cat([query_pe[i * split:(i + 1) * split] for i in range(NUM_GROUPS)], dim=1)
    queries = layer.norm2(queries + layer.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    keys = layer.norm4(keys + layer.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries))
    return queries.transpose(0, 1).reshape(-1, 1, queries.shape[-1]), keys


def official_transformer(transformer, image, image_pe, tokens):
    """`TwoWayTransformer.forward` of transformer_query_iou.py. image [Q, C, g, g] (its own
    copy per query), image_pe [1, C, g, g], tokens [4Q, C]."""
    keys = image.flatten(2).permute(0, 2, 1)
    key_pe = torch.repeat_interleave(image_pe, image.shape[0], dim=0).flatten(2).permute(0, 2, 1)
    point_embedding = tokens.unsqueeze(1)
    queries = point_embedding
    for layer in transformer.layers:
        queries, keys = official_block(layer, queries, keys, point_embedding, key_pe)
    q = queries + point_embedding
    split = q.shape[0] // NUM_GROUPS
    q = torch.cat([q[i * split:(i + 1) * split] for i in range(NUM_GROUPS)], dim=1)
    out = transformer.final_attn_token_to_image(q, keys + key_pe, keys)
    out = out.transpose(0, 1).reshape(-1, 1, out.shape[-1])
    return transformer.norm_final_attn(queries + out)[:, 0], keys


def official_point_embedding(prompt, points):
    """`PromptEncoder._embed_points` (pad=True) + `forward_with_coords`: row 0 of each query."""
    coords = torch.cat([points.unsqueeze(1) + 0.5, torch.zeros(points.shape[0], 1, 2)], dim=1).clone()
    size = prompt.input_image_size
    coords[:, :, 0] = coords[:, :, 0] / size
    coords[:, :, 1] = coords[:, :, 1] / size
    pe = prompt.pe_layer.encode(coords.to(torch.float))
    return pe[:, 0] + prompt.point_embeddings[1].weight


def official_memory_attention(attention, curr, curr_pos, memory, memory_pos):
    """`MemoryAttention.forward` of sam2/modeling/memory_attention.py: sequence-first inputs
    ([N, B, C], the frame's features repeated for every query), transposed to batch-first, every
    layer over all queries at once."""
    b = memory.shape[0]
    output = curr.transpose(0, 1).expand(-1, b, -1) + 0.1 * curr_pos.transpose(0, 1).expand(-1, b, -1)
    output = output.transpose(0, 1)
    memory = memory.transpose(0, 1).contiguous().transpose(0, 1)  # stored sequence-first there
    memory_pos = memory_pos.expand(b, -1, -1).transpose(0, 1).contiguous().transpose(0, 1)
    for layer in attention.layers:
        output = layer(output, memory, memory_pos)
    return attention.norm(output)


def compare_at_published_size() -> dict:
    """This project's exact-mode decoder transformer and point encoding against the official
    choreography, random weights at vit-s sizes: {part: bit-identical}."""
    from entitysam.modeling.decoder import EntityDecoder
    from entitysam.modeling.memory import MemoryAttention
    from entitysam.modeling.prompt import PromptEncoder

    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = get_config("vit-s")
    c, q, g = cfg.hidden_dim, cfg.num_queries, cfg.grid_size
    decoder = EntityDecoder(c, q, cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_mlp_dim).eval()
    prompt = PromptEncoder(c, g, cfg.image_size).eval()
    with torch.inference_mode():
        for p in list(decoder.parameters()) + list(prompt.parameters()):
            p.normal_(0, 0.05)
        # the step's image: [1, g*g, C] rows -> [1, C, g, g], one copy per query in exact mode
        rows = torch.randn(1, g * g, c)
        image = rows.transpose(1, 2).unflatten(-1, (g, g)) + prompt.dense_embedding()
        image = image.expand(q, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        points = torch.rand(q, 2) * cfg.image_size
        sparse = prompt.embed_positive_points(points)
        tokens = torch.cat([decoder.queries.weight, decoder.iou_queries.weight, sparse.flatten(0, 1)])
        ours_tokens, ours_image = decoder.transformer(image, prompt.dense_pe(), tokens, batched=True)
        sparse_ref = torch.stack([official_point_embedding(prompt, points), sparse[:, 1]], dim=1)
        tokens_ref = torch.cat([decoder.queries.weight, decoder.iou_queries.weight, sparse_ref.flatten(0, 1)])
        ref_tokens, ref_image = official_transformer(decoder.transformer, image, prompt.dense_pe(), tokens_ref)
        # the memory attention of step 1 (one memory per query), for 2 queries: already twice the
        # rows of one query in each product (50 would take minutes on 2 cores)
        attention = MemoryAttention(c, cfg.mem_dim, cfg.memory_attention_layers, cfg.memory_attention_ffn_dim).eval()
        for p in attention.parameters():
            p.normal_(0, 0.05)
        curr, curr_pos = torch.randn(1, g * g, c), torch.randn(1, g * g, c)
        memory, memory_pos = torch.randn(2, g * g, cfg.mem_dim), torch.randn(1, g * g, cfg.mem_dim)
        ours_memory = attention(curr, curr_pos, memory, memory_pos, exact=True)
        ref_memory = official_memory_attention(attention, curr, curr_pos, memory, memory_pos)
    return {"point encoding": bool(torch.equal(sparse, sparse_ref)),
            "decoder tokens": bool(torch.equal(ours_tokens, ref_tokens)),
            "decoder image": bool(torch.equal(ours_image, ref_image)),
            "memory attention": bool(torch.equal(ours_memory, ref_memory))}


# ------------------------------------------------------------------------------------ tests

def test_exact_step_gives_the_decoder_one_image_copy_per_query_in_the_official_layout(tiny_model):
    seen = {}

    def capture(module, args):
        seen["image"], seen["batched"] = args[0], args[3] if len(args) > 3 else None

    handle = tiny_model.sam_mask_decoder.transformer.register_forward_pre_hook(capture)
    try:
        s = tiny_model.cfg.image_size
        with torch.inference_mode():
            frame = tiny_model.encode_frame(torch.randn(1, 3, s, s))
            tiny_model.step(frame, [], None, exact=True)
    finally:
        handle.remove()
    image = seen["image"]
    assert seen["batched"] is True  # all groups of tokens at once, as the official batch
    assert image.shape[0] == tiny_model.cfg.num_queries and image.stride(0) != 0
    assert image.flatten(2).transpose(1, 2).is_contiguous()  # [Q, g*g, C] rows, as the official keys


def test_exact_first_step_reads_and_projects_the_features_as_the_official_batch(tiny_model):
    """The official first step holds Q equal copies of the features in SAM 2's [N, Q, C] token
    layout: its point sampler reads query 0's rows there (row stride Q*C, the leading dimension
    oneMKL is handed) and the feature enhancement projects all Q*N rows in one product. Seen
    with scripts/reference/kernel_trace.py, which compares the oneMKL/oneDNN calls."""
    seen = {}
    cfg = tiny_model.cfg

    def first_input(name):
        def hook(module, args):
            seen.setdefault(name, args[0])  # the exact step's call, not the default one's
        return hook

    hooks = [tiny_model.point_sampler_net.register_forward_pre_hook(first_input("sampler")),
             tiny_model.backbone_feature_enhancement.register_forward_pre_hook(first_input("fused"))]
    try:
        with torch.inference_mode():
            frame = tiny_model.encode_frame(torch.randn(1, 3, cfg.image_size, cfg.image_size))
            exact = tiny_model.step(frame, [], None, exact=True)
            default = tiny_model.step(frame, [], None)
    finally:
        for h in hooks:
            h.remove()
    tokens, channels = seen["sampler"].shape[1:]
    assert seen["sampler"].stride(1) == cfg.num_queries * channels
    assert seen["fused"].shape[:2] == (cfg.num_queries, tokens)
    assert torch.allclose(exact.points, default.points, atol=1e-4)  # the same points, however read
    assert torch.allclose(exact.mask_logits, default.mask_logits, atol=1e-4)


def test_exact_memory_attention_projects_every_querys_keys_and_values_in_one_product(tiny_model):
    """The official RoPEAttention projects the keys and values of all queries at once; the
    training path's chunks of 8 queries would hand oneMKL other row counts (kernel_trace.py)."""
    attention, g = tiny_model.memory_attention, tiny_model.cfg.grid_size
    dim = attention.layers[0].self_attn.q_proj.in_features
    mem_dim = attention.layers[0].cross_attn_image.k_proj.in_features
    queries = 10  # more than one chunk of 8
    rows = []
    hooks = [proj.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[:-1].numel()))
             for layer in attention.layers for proj in (layer.self_attn.k_proj, layer.cross_attn_image.v_proj)]
    try:
        with torch.inference_mode():
            attention(torch.randn(1, g * g, dim), torch.randn(1, g * g, dim), torch.randn(queries, 2 * g * g, mem_dim),
                      torch.randn(1, 2 * g * g, mem_dim), exact=True)
    finally:
        for h in hooks:
            h.remove()
    assert rows == [queries * g * g, queries * 2 * g * g] * len(attention.layers)


def _shim(tmp_path: Path) -> Path:
    if platform.machine() not in ("x86_64", "AMD64") or "mkl" not in torch.__config__.show().lower():
        pytest.skip("oneMKL's Intel code paths exist only in x86 builds of torch with MKL")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the CPU-detection shim")
    (tmp_path / "shim.c").write_text(SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(tmp_path / "shim.so"), str(tmp_path / "shim.c")],
                   check=True)
    return tmp_path / "shim.so"


@pytest.mark.parametrize("path", list(INTEL_PATHS))
def test_exact_decoder_and_point_encoding_are_the_official_ones_on_each_blas_path(tmp_path, path):
    if path in NEEDS_FLAG and NEEDS_FLAG[path] not in cpu_flags():
        # told it runs on such a CPU, oneMKL runs those instructions: an illegal instruction here (a Zen 3)
        pytest.skip(f"oneMKL's {path} path needs a CPU with {NEEDS_FLAG[path]}; this one has none")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    if INTEL_PATHS[path] is not None:
        env.update(LD_PRELOAD=str(_shim(tmp_path)), ENTITYSAM_TEST_MKL_CPU=str(INTEL_PATHS[path]))
    code = "import json, test_blas_paths as t; print(json.dumps(t.compare_at_published_size()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "point encoding": True, "decoder tokens": True, "decoder image": True, "memory attention": True}


def test_exact_point_sampler_is_the_official_module_call(tiny_model):
    """The official code calls its point sampler with the module's default `need_weights=True`;
    a PyTorch build may run `need_weights=False` on another kernel (its fused attention), so only
    the default mode may ask for it. Seen with kernel_trace.py --level aten."""
    calls = []
    handle = tiny_model.point_sampler_net.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs.get("need_weights", True)), with_kwargs=True)
    try:
        with torch.inference_mode():
            s = tiny_model.cfg.image_size
            frame = tiny_model.encode_frame(torch.randn(1, 3, s, s))
            tiny_model.step(frame, [], None, exact=True)
            tiny_model.step(frame, [], None)
    finally:
        handle.remove()
    assert calls == [True, False]


def test_frames_are_channel_planar_in_memory_as_the_official_frames():
    """The official loader fills a contiguous [n, 3, S, S] tensor: the encoders' first kernels
    (the patch embedding, DINOv2's resize) are handed that layout, not a channels-last view."""
    from entitysam.inference.preprocess import preprocess_frame

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    x = preprocess_frame(rgb, 32)
    assert x.shape == (1, 3, 32, 32) and x.is_contiguous()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = torch.from_numpy(np.asarray(Image.fromarray(rgb).resize((32, 32))) / 255.0).float()
    assert torch.equal(x[0], ((pixels.permute(2, 0, 1) - mean[:, None, None]) / std[:, None, None]))


def test_exact_memory_is_read_in_the_official_sequence_first_layout(tiny_model):
    """The official bank is [M, Q, m] (sequence first) and the memory attention reads it batch
    first: its key and value projections get a non-contiguous [Q, M, m] view, which torch runs as
    a matmul with the bias added after, not one addmm over contiguous rows (kernel_trace.py
    --level aten)."""
    cfg = tiny_model.cfg
    layouts = []
    layer = tiny_model.memory_attention.layers[0].cross_attn_image
    hooks = [proj.register_forward_pre_hook(lambda m, a: layouts.append((a[0].shape, a[0].stride())))
             for proj in (layer.k_proj, layer.v_proj)]
    try:
        with torch.inference_mode():
            frame = tiny_model.encode_frame(torch.randn(1, 3, cfg.image_size, cfg.image_size))
            first = tiny_model.step(frame, [], None, exact=True)
            memories = [(first.memory, 2), (first.memory.flip(0), 1)]
            exact = tiny_model.step(frame, memories, first.points, exact=True)
            default = tiny_model.step(frame, memories, first.points)
    finally:
        for h in hooks:
            h.remove()
    q, m, g = cfg.num_queries, first.memory.shape[1], cfg.grid_size
    sequence_first = (m, q * m, 1)
    assert layouts[:2] == [(torch.Size([q, 2 * g * g, m]), sequence_first)] * 2
    assert torch.allclose(exact.mask_logits, default.mask_logits, atol=1e-4)


def test_rotary_table_is_made_per_axis_as_the_official_one():
    """compute_axial_cis: one torch.polar per axis, then concatenated."""
    from entitysam.modeling.common import _rope_table_cpu

    calls = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.polar:
                calls.append(tuple(args[1].shape))
            return func(*args, **(kwargs or {}))

    _rope_table_cpu.cache_clear()
    try:
        with Record():
            table = _rope_table_cpu(32, 4, 10000.0)
    finally:
        _rope_table_cpu.cache_clear()
    assert calls == [(16, 8), (16, 8)] and table.shape == (16, 16)

"""Unit tests of each module on the tiny configuration: shapes, determinism, batch structure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from entitysam.config import get_config
from entitysam.modeling.common import apply_rope, rope_table, sine_position_encoding
from entitysam.modeling.decoder import group_tokens, ungroup_tokens
from entitysam.modeling.dinov2 import DinoV2
from entitysam.modeling.hiera import ImageEncoder, window_partition, window_unpartition
from entitysam.modeling.cpu_attention import attend_float32, attend_low_precision
from entitysam.modeling.memory import MemoryAttention, RoPEAttention
from entitysam.modeling.memory_encoder import MemoryEncoder
from entitysam.modeling.prompt import sample_points

TINY = get_config("tiny")


def test_window_partition_roundtrip_with_padding():
    x = torch.randn(2, 7, 9, 3)
    windows, padded = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 4, 4, 3) and padded == (8, 12)
    assert torch.equal(window_unpartition(windows, 4, padded, (7, 9)), x)


def test_image_encoder_shapes_and_determinism():
    torch.manual_seed(0)
    enc = ImageEncoder(TINY.hiera, TINY.hidden_dim).eval()
    x = torch.randn(1, 3, 128, 128)
    feats, pos = enc(x)
    assert [tuple(f.shape) for f in feats] == [(1, 32, 32, 32), (1, 32, 16, 16), (1, 32, 8, 8)]
    assert [tuple(p.shape) for p in pos] == [tuple(f.shape) for f in feats]
    again, _ = enc(x)
    assert all(torch.equal(a, b) for a, b in zip(feats, again))
    # batch independence: a batch of two gives each image's own features
    batch, _ = enc(torch.cat([x, torch.randn(1, 3, 128, 128)]))
    torch.testing.assert_close(batch[2][:1], feats[2], atol=1e-5, rtol=1e-5)


def test_vit_s_hiera_windows_lag_one_block():
    """The first (pooling) block of a stage keeps the previous stage's window (SAM 2 quirk)."""
    with torch.device("meta"):
        enc = ImageEncoder(get_config("vit-s").hiera, 256)
    windows = [b.window_size for b in enc.trunk.blocks]
    assert windows == [8, 8, 4, 4, 14, 14, 14, 0, 14, 14, 0, 14, 14, 0, 14, 7]
    assert [b.q_pool for b in enc.trunk.blocks].count(True) == 3


def test_sine_position_encoding_layout():
    pe = sine_position_encoding(8, 3, 5)
    assert pe.shape == (8, 3, 5)
    # first half encodes rows: constant along columns; second half encodes columns
    assert torch.allclose(pe[:4, :, 0:1].expand(-1, -1, 5), pe[:4])
    assert torch.allclose(pe[4:, 0:1, :].expand(-1, 3, -1), pe[4:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_the_written_out_rotation_bit_for_bit(dtype):
    """Each channel pair (a, b) of grid token t becomes (a cos - b sin, a sin + b cos), the same
    table for each of the 3 grids of 16 tokens."""
    x = torch.randn(2, 3 * 16, 8).to(dtype)
    table = rope_table(8, 4)
    cos, sin = table.real.repeat(3, 1), table.imag.repeat(3, 1)
    a, b = x.float()[..., 0::2], x.float()[..., 1::2]
    ref = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(dtype)
    out = apply_rope(x, table)
    assert out.dtype == dtype and torch.equal(out, ref)


def test_dinov2_position_embedding_uses_scale_factor_rule():
    torch.manual_seed(0)
    dino = DinoV2(TINY.dino)
    with torch.no_grad():
        dino.pos_embed.normal_()
    assert dino.position_embedding(5, 5) is dino.pos_embed
    pos = dino.position_embedding(8, 8)
    assert pos.shape == (1, 65, 24)
    m = TINY.dino.pretrain_grid
    grid = dino.pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(8, 8), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 64, -1)
    assert not torch.allclose(pos[:, 1:], by_size)  # the +0.1 offset moves the sampling grid
    tokens = dino(torch.randn(2, 3, 8 * 14, 8 * 14))
    assert tokens.shape == (2, 64, 24)


def test_rope_attention_chunking_and_batch_independence():
    torch.manual_seed(0)
    attn = RoPEAttention(32, kv_in_dim=16).eval()
    q = torch.randn(1, 64, 32)
    mem = torch.randn(5, 128, 16)  # two memory frames per query
    full = attn(q, mem, mem, batch_chunk=8)
    torch.testing.assert_close(attn(q, mem, mem, batch_chunk=2), full)
    torch.testing.assert_close(attn(q, mem[3:4], mem[3:4]), full[3:4], atol=1e-6, rtol=1e-6)


def test_memory_attention_shared_first_layer_equals_expanded_batch():
    torch.manual_seed(0)
    ma = MemoryAttention(32, 16, num_layers=2, ffn_dim=64).eval()
    curr, pos = torch.randn(1, 64, 32), torch.randn(1, 64, 32)
    memory, mpos = torch.randn(4, 64, 16), torch.randn(1, 64, 16)
    shared = ma(curr, pos, memory, mpos)
    expanded = ma(curr.expand(4, -1, -1), pos.expand(4, -1, -1), memory, mpos.expand(4, -1, -1))
    assert shared.shape == (4, 64, 32)
    torch.testing.assert_close(shared, expanded, atol=1e-5, rtol=1e-5)


def test_memory_encoder_is_independent_per_query():
    torch.manual_seed(0)
    enc = MemoryEncoder(32, 16, fuser_layers=1).eval()
    pix = torch.randn(1, 32, 8, 8)
    masks = torch.randn(3, 1, 128, 128)
    out = enc(pix, masks)
    assert out.shape == (3, 16, 8, 8)
    torch.testing.assert_close(enc(pix, masks[1:2]), out[1:2], atol=1e-5, rtol=1e-5)


def test_token_grouping_puts_other_queries_prompts_in_each_group():
    q = 6
    tokens = torch.arange(4 * q).float().unsqueeze(1)  # value = row index
    grouped = group_tokens(tokens)
    assert grouped.shape == (q, 4, 1)
    assert grouped[2, :, 0].tolist() == [2, q + 2, 2 * q + 2, 3 * q + 2]
    assert torch.equal(ungroup_tokens(grouped), tokens)


def test_point_sampler_returns_row_then_column():
    """Points are expectations of (row, col) scaled to pixels; the model reads them as (x, y)."""
    g, q = 4, 2
    c = g * g
    sampler = torch.nn.MultiheadAttention(c, 1, batch_first=True)
    head = torch.nn.Linear(c, q)
    tokens = torch.eye(c)  # one-hot token per grid position
    with torch.no_grad():
        for p in (*sampler.parameters(), *head.parameters()):
            p.zero_()
        sampler.in_proj_weight.copy_(torch.cat([50 * torch.eye(c), 50 * torch.eye(c), torch.eye(c)]))
        sampler.out_proj.weight.copy_(torch.eye(c))  # with peaked self-attention: output = input
        head.weight[0, 1 * g + 3] = 1000.0  # query 0 -> row 1, col 3
        head.weight[1, 2 * g + 0] = 1000.0  # query 1 -> row 2, col 0
    points = sample_points(tokens, (g, g), sampler, head, image_size=64)
    torch.testing.assert_close(points, torch.tensor([[16.0, 48.0], [32.0, 0.0]]), atol=1e-3, rtol=0)


def test_model_step_shapes_and_determinism(tiny_model):
    from entitysam.inference.tracker import EntityTracker

    image = torch.randn(1, 3, 128, 128)

    def run():
        tracker = EntityTracker(tiny_model)
        return [tracker.step(0, image) for _ in range(3)]

    first, second = run(), run()
    q = TINY.num_queries
    for a, b in zip(first, second):
        assert a.mask_logits.shape == (q, 1, 32, 32)
        assert a.scores.shape == (q,) and a.points.shape == (q, 2)
        assert torch.equal(a.mask_logits, b.mask_logits) and torch.equal(a.points, b.points)
    assert not torch.equal(first[0].points, first[1].points)  # offsets move the points


def test_offset_attention_equals_multihead_attention_on_concatenated_features():
    from entitysam.modeling.prompt import offset_attention

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
    queries = torch.randn(3, 16)
    sam, semantic = torch.randn(3, 20, 8), torch.randn(1, 20, 8)
    fused = torch.cat([sam, semantic.expand(3, -1, -1)], dim=-1)
    ref, _ = mha(queries.unsqueeze(1), fused, fused)
    torch.testing.assert_close(offset_attention(mha, queries, sam, semantic), ref.squeeze(1), atol=1e-5, rtol=1e-5)
    # shared features (first step): one row of sam for all queries
    ref_shared, _ = mha(queries.unsqueeze(1), fused[:1].expand(3, -1, -1), fused[:1].expand(3, -1, -1))
    torch.testing.assert_close(offset_attention(mha, queries, sam[:1], semantic), ref_shared.squeeze(1),
                               atol=1e-5, rtol=1e-5)


def test_cached_tables_made_under_inference_mode_work_with_autograd():
    with torch.inference_mode():
        rope_table(8, 5)
        sine_position_encoding(8, 5, 5)
    x = torch.randn(25, 8, requires_grad=True)
    (apply_rope(x, rope_table(8, 5)).sum() + sine_position_encoding(8, 5, 5).sum()).backward()
    assert x.grad is not None


def test_raw_value_attention_equals_projected_value_attention():
    """Inference attends over raw values and projects afterwards: same maths as `forward`."""
    torch.manual_seed(0)
    attn = RoPEAttention(32, kv_in_dim=16).eval()
    x, memory = torch.randn(1, 64, 32), torch.randn(1, 128, 16)  # two memory frames
    with torch.no_grad():
        ref = attn(x, memory, memory)[0]
        q_rot = attn.rotate(attn.q_proj(x[0]), 8)
        torch.testing.assert_close(attn.attend_raw_values(q_rot, memory[0], memory[0], rows=24, cols=48), ref,
                                   atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = attn.attend_raw_values(attn.rotate(attn.q_proj(x[0]), 8), memory[0], memory[0])
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.05)


def test_memory_attention_per_query_inference_equals_batched_training_path():
    torch.manual_seed(0)
    ma = MemoryAttention(32, 16, num_layers=3, ffn_dim=64).eval()
    curr, pos = torch.randn(1, 64, 32), torch.randn(1, 64, 32)
    memory, mpos = torch.randn(3, 192, 16).bfloat16(), torch.randn(1, 192, 16)  # 3 memory frames
    batched = ma(curr, pos, memory, mpos)  # grad enabled: the batched, differentiable path
    with torch.no_grad():
        per_query = ma(curr, pos, memory, mpos)
        single = ma(curr, pos, memory[1:2], mpos)
    assert batched.requires_grad and per_query.shape == (3, 64, 32)
    torch.testing.assert_close(per_query, batched.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single[0], per_query[1], atol=1e-6, rtol=1e-6)


def test_fused_linear_is_one_product_over_the_concatenation():
    """Bit-identical to the official linear map on cat([sam, semantic]) (the ViT-L fixture needs it)."""
    from entitysam.modeling.prompt import fused_linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 16)
    sam, semantic = torch.randn(3, 64, 32), torch.randn(1, 64, 16)
    with torch.no_grad():
        expected = linear(torch.cat([sam, semantic.expand(3, -1, -1)], dim=-1))
        assert torch.equal(fused_linear(linear, sam, semantic), expected)


def test_bfloat16_memory_attention_mode_keeps_the_rest_in_float32(tiny_model):
    """CPU bfloat16 mode: only the memory attention runs under autocast; its output is float32."""
    from entitysam.inference.precision import precision_plan

    torch.manual_seed(0)
    model = tiny_model
    context, attention_dtype = precision_plan(model, torch.bfloat16)
    assert attention_dtype == torch.bfloat16 and not isinstance(context, torch.autocast)
    with torch.no_grad():
        frame = model.encode_frame(torch.randn(1, 3, 128, 128))
        first = model.step(frame, [], None)
        memories = [(first.memory.bfloat16(), 1)]
        full = model.condition_on_memory(frame, memories)
        low = model.condition_on_memory(frame, memories, attention_dtype=torch.bfloat16)
        out = model.step(frame, memories, first.points, attention_dtype=torch.bfloat16)
    assert low.dtype == torch.float32 and out.mask_logits.dtype == torch.float32
    assert not torch.equal(low, full)  # the attention really ran in bfloat16
    torch.testing.assert_close(low, full, atol=0.1, rtol=0.05)


def test_point_sampler_rounds_exactly_as_the_official_call(tiny_model):
    """Bit-identical to the official call sequence, not just close: the points feed random Fourier
    features and, through the masks, the bfloat16 memory, where rounding differences grow."""
    import torch.nn.functional as F

    m, cfg = tiny_model, TINY
    g = cfg.grid_size
    torch.manual_seed(0)
    with torch.inference_mode():
        frame = m.encode_frame(torch.randn(1, 3, cfg.image_size, cfg.image_size))
        # official: the module called on the (1, g*g, C) tokens, softmax over positions, bmm with (row, col)
        x = frame.vision.flatten(2).transpose(1, 2)
        attended, _ = m.point_sampler_net(x, x, x)
        weights = F.softmax(m.point_sampler_num(attended), dim=1).permute(0, 2, 1)
        rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        expected = torch.bmm(weights, torch.stack([rows, cols], -1).view(1, -1, 2).float())[0]
        expected[:, 0] *= cfg.image_size / g
        expected[:, 1] *= cfg.image_size / g
        assert torch.equal(sample_points(x[0], (g, g), m.point_sampler_net, m.point_sampler_num, cfg.image_size),
                           expected)



def test_memory_encoder_rounds_exactly_as_the_official_call():
    """The image features are channels-last; the official memory encoder gets a default-layout copy
    ((HW, B, C) tokens viewed back as (B, C, H, W)), and at the published width (256) the 1x1
    convolution rounds differently by layout. Bit-identical here, not just close."""
    import dataclasses

    import torch.nn.functional as F
    from entitysam.config import get_config
    from entitysam.modeling.entitysam import EntitySAM, FrameFeatures

    torch.manual_seed(0)
    cfg = dataclasses.replace(get_config("tiny"), hidden_dim=256, mem_dim=64, image_size=256)
    m = EntitySAM(cfg).eval()
    g = cfg.image_size // cfg.backbone_stride
    vision = torch.randn(1, 256, g, g).contiguous(memory_format=torch.channels_last)
    frame = FrameFeatures(vision, None, (None, None), None)
    logits = torch.randn(1, 1, 4 * g, 4 * g) * 4
    with torch.inference_mode():
        high = F.interpolate(logits, size=(cfg.image_size,) * 2, mode="bilinear", align_corners=False)
        squashed = torch.sigmoid(high) * cfg.sigmoid_scale_for_mem_enc + cfg.sigmoid_bias_for_mem_enc
        pix = vision.flatten(2).permute(2, 0, 1).permute(1, 2, 0).view(1, -1, g, g)
        assert torch.equal(m.encode_memory(frame, logits), m.memory_encoder(pix, squashed))


def _official_memory_attention(ma: MemoryAttention, curr, curr_pos, memory, memory_pos):
    """SAM 2.1's memory attention transcribed op for op (sequence-first tensors viewed batch-first,
    RoPE as a complex product with `torch.polar` tables, SDPA on projected keys and values)."""
    import torch.nn.functional as F

    def cis(dim, side):
        freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
        t = torch.arange(side * side, dtype=torch.float32)
        t_x, t_y = (t % side).float(), torch.div(t, side, rounding_mode="floor").float()
        fx, fy = torch.outer(t_x, freqs), torch.outer(t_y, freqs)
        return torch.cat([torch.polar(torch.ones_like(fx), fx), torch.polar(torch.ones_like(fy), fy)], dim=-1)

    def attention(a, q, k, v):
        q, k, v = a.q_proj(q).unsqueeze(1), a.k_proj(k).unsqueeze(1), a.v_proj(v).unsqueeze(1)
        side = int(q.shape[-2] ** 0.5)
        table = cis(q.shape[-1], side)
        qc = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))
        kc = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
        r = kc.shape[-2] // qc.shape[-2]
        ktable = table.view(1, 1, *table.shape).unsqueeze(2).expand(-1, -1, r, -1, -1).flatten(2, 3)
        q = torch.view_as_real(qc * table.view(1, 1, *table.shape)).flatten(3)
        k = torch.view_as_real(kc * ktable).flatten(3)
        return a.out_proj(F.scaled_dot_product_attention(q, k, v).squeeze(1))

    x = (curr + 0.1 * curr_pos).transpose(0, 1)  # [N, B, C] -> batch-first view
    memory, memory_pos = memory.transpose(0, 1), memory_pos.transpose(0, 1)
    for layer in ma.layers:
        h = layer.norm1(x)
        x = x + attention(layer.self_attn, h, h, h)
        h = layer.norm2(x)
        x = x + attention(layer.cross_attn_image, h, memory + memory_pos, memory)
        x = x + layer.linear2(F.relu(layer.linear1(layer.norm3(x))))
    return ma.norm(x)


@pytest.mark.parametrize("rows", [24, 64, 256])
def test_attention_kernels_equal_the_plain_softmax(rows):
    """Both inference kernels compute softmax(q k^T) v, whatever the row blocking (24 rows of 64:
    a short last block; 256: one block): float32 with running statistics over key blocks,
    bfloat16 with whole score rows."""
    torch.manual_seed(0)
    q, k, v = torch.randn(64, 32) / 2, torch.randn(3 * 40, 32) / 2, torch.randn(3 * 40, 16)
    ref = torch.softmax(q.double() @ k.double().t(), dim=-1) @ v.double()
    out32 = attend_float32(q, k, v, rows=rows, cols=48)  # 3 key blocks, the last one short
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref, atol=1e-5, rtol=1e-5)
    low = attend_low_precision(q.bfloat16(), k.bfloat16(), v.bfloat16(), rows=rows)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), ref, atol=3e-2, rtol=3e-2)
    assert (low.double() - ref).abs().mean() < 5e-3


def test_memory_attention_on_worker_threads_is_bit_identical(monkeypatch):
    """Queries spread over single-threaded workers compute exactly what the calling thread
    would, under the caller's autocast; torch's thread count is restored; errors propagate."""
    from entitysam.modeling import memory as memory_module

    torch.manual_seed(0)
    ma = MemoryAttention(32, 16, num_layers=2, ffn_dim=64).eval()
    curr, pos = torch.randn(1, 64, 32), torch.randn(1, 64, 32)
    memory, memory_pos = torch.randn(5, 128, 16).bfloat16(), torch.randn(1, 128, 16)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                spread = ma(curr, pos, memory, memory_pos)
                assert torch.get_num_threads() == 2
                with monkeypatch.context() as m:
                    m.setattr(memory_module, "for_each_query", lambda fn, n, device: [fn(b) for b in range(n)])
                    serial = ma(curr, pos, memory, memory_pos)
            assert torch.equal(spread, serial)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dtypes = []
            memory_module.for_each_query(lambda b: dtypes.append(F.linear(curr, torch.ones(2, 32)).dtype), 3,
                                         torch.device("cpu"))
        assert dtypes == [torch.bfloat16] * 3

        def fail(b):
            if b == 2:
                raise ValueError("query 2")
        with pytest.raises(ValueError, match="query 2"):
            memory_module.for_each_query(fail, 4, torch.device("cpu"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_rope_table_is_the_official_polar_table():
    """Through torch.polar as official: torch.cos/sin differ in the last bit at the published size."""
    dim, side = 256, 64
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(side * side, dtype=torch.float32)
    angles = torch.cat([torch.outer(t % side, freqs), torch.outer(torch.div(t, side, rounding_mode="floor"), freqs)], -1)
    table = torch.polar(torch.ones_like(angles), angles)
    assert torch.equal(rope_table(dim, side), table)


def test_exact_memory_encoding_is_the_official_batched_call_bit_for_bit(one_torch_thread):
    """Exact mode encodes all queries in one batch with the image features broadcast to every row,
    as the official model (a stride-0 batch of channels-last features): on AVX-512 CPUs a
    convolution rounds one query differently from the same rows of a larger batch (on an AMD EPYC
    Zen 4, 16 queries at width 256 here, the per-query encoding of the default mode differs)."""
    import dataclasses

    import torch.nn.functional as F
    from entitysam.config import get_config
    from entitysam.modeling.entitysam import EntitySAM, FrameFeatures

    torch.manual_seed(0)
    cfg = dataclasses.replace(get_config("tiny"), hidden_dim=256, mem_dim=64, image_size=256)
    m = EntitySAM(cfg).eval()
    g, q = cfg.image_size // cfg.backbone_stride, 16
    vision = torch.randn(1, 256, g, g).contiguous(memory_format=torch.channels_last)
    frame = FrameFeatures(vision, None, (None, None), None)
    logits = torch.randn(q, 1, 4 * g, 4 * g) * 4
    with torch.inference_mode():
        high = F.interpolate(logits, size=(cfg.image_size,) * 2, mode="bilinear", align_corners=False)
        squashed = torch.sigmoid(high) * cfg.sigmoid_scale_for_mem_enc + cfg.sigmoid_bias_for_mem_enc
        official = m.memory_encoder(vision.expand(q, -1, -1, -1), squashed)
        assert torch.equal(m.encode_memory(frame, logits, exact=True), official)
        torch.testing.assert_close(m.encode_memory(frame, logits), official, atol=1e-4, rtol=1e-4)


def test_exact_memory_attention_is_the_official_computation_bit_for_bit():
    """`exact=True` rounds as the official batched computation (published widths, small grid);
    the default per-query path computes the same maths in another order."""
    torch.manual_seed(0)
    ma = MemoryAttention(256, 64, num_layers=2, ffn_dim=2048).eval()
    b, n = 3, 64  # 3 queries, 8 x 8 grid, 2 memory frames
    curr, pos = torch.randn(n, 1, 256).expand(-1, b, -1), torch.randn(n, 1, 256).expand(-1, b, -1)
    memory = torch.randn(2 * n, b, 64).bfloat16().float()
    memory_pos = torch.randn(2 * n, 1, 64).expand(-1, b, -1)
    with torch.no_grad():
        expected = _official_memory_attention(ma, curr, pos, memory, memory_pos)
        args = (curr[:, :1].transpose(0, 1), pos[:, :1].transpose(0, 1), memory.transpose(0, 1).bfloat16(),
                memory_pos[:, :1].transpose(0, 1))
        exact = ma(*args, exact=True)
        fast = ma(*args)
    assert torch.equal(exact, expected)
    assert not torch.equal(fast, expected)
    torch.testing.assert_close(fast, expected, atol=1e-4, rtol=1e-4)


def test_exact_offset_attention_is_the_official_call_bit_for_bit():
    from entitysam.modeling.prompt import offset_attention, offset_attention_as_official

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(512, 8, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        queries = torch.randn(3, 512)
        sam, semantic = torch.randn(3, 64, 256), torch.randn(1, 64, 256)
        fused = torch.cat([sam, semantic.expand(3, -1, -1)], dim=-1)
        expected, _ = mha(queries.unsqueeze(1), fused, fused)  # official: whole batch, need_weights=True
        assert torch.equal(offset_attention_as_official(mha, queries, sam, semantic), expected[:, 0])
        assert not torch.equal(offset_attention(mha, queries, sam, semantic), expected[:, 0])
        shared, _ = mha(queries.unsqueeze(1), fused[:1].expand(3, -1, -1), fused[:1].expand(3, -1, -1))
        assert torch.equal(offset_attention_as_official(mha, queries, sam[:1], semantic), shared[:, 0])


def test_hiera_position_embedding_is_kept_only_while_the_parameters_stand():
    """The resized position embedding is reused without gradients (CUDA's bicubic kernel cost
    2-6 ms a step) and remade when the weights change in place (load_state_dict, optimizer)."""
    trunk = ImageEncoder(TINY.hiera, TINY.hidden_dim).trunk
    with torch.no_grad():
        trunk.pos_embed.normal_()
        first = trunk._pos_embed(16, 16)
        assert trunk._pos_embed(16, 16) is first
        assert torch.equal(first, trunk._make_pos_embed(16, 16))
        trunk.pos_embed.add_(1.0)
        second = trunk._pos_embed(16, 16)
        assert torch.equal(second, trunk._make_pos_embed(16, 16)) and not torch.equal(first, second)
        trunk.pos_embed_window.add_(1.0)
        assert torch.equal(trunk._pos_embed(16, 16), trunk._make_pos_embed(16, 16))
    with_grad = trunk._pos_embed(16, 16)
    assert with_grad.requires_grad and with_grad is not trunk._pos_embed(16, 16)


def test_dinov2_position_embedding_is_kept_only_while_the_parameters_stand():
    dino = DinoV2(TINY.dino)
    with torch.no_grad():
        dino.pos_embed.normal_()
        first = dino.position_embedding(7, 9)
        assert dino.position_embedding(7, 9) is first
        assert torch.equal(first, dino._make_position_embedding(7, 9))
        assert torch.equal(dino.position_embedding(8, 8), dino._make_position_embedding(8, 8))  # another size
        dino.load_state_dict({**dino.state_dict(), "pos_embed": dino.pos_embed + 1})
        assert torch.equal(dino.position_embedding(7, 9), dino._make_position_embedding(7, 9))
        assert not torch.equal(dino.position_embedding(7, 9), first)
    assert dino.position_embedding(7, 9).requires_grad

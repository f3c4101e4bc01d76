"""scripts/reference/aten_trace.py: which ATen calls it keeps, and how it writes them."""

from __future__ import annotations

import io
import sys

import torch
import torch.nn.functional as F

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts" / "reference"))
import aten_trace  # noqa: E402
import kernel_trace  # noqa: E402


def traced(fn) -> list[str]:
    """The calls of fn, as kernel_trace.py compares them."""
    out = io.StringIO()
    with torch.inference_mode(), aten_trace.AtenTrace(out):
        fn()
    return aten_trace.calls(out.getvalue())


def test_composite_operators_are_traced_as_the_kernels_they_run():
    """Under inference mode `linear` and `layer_norm` reach a dispatch mode whole: the trace must
    show what runs (addmm, native_layer_norm), so that a transposed operand is visible."""
    x, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
    calls = traced(lambda: (F.linear(x, w, b), F.layer_norm(x, [4])))
    assert calls == ["aten.addmm.default(f32[5]/(1)@0, f32[3,4]/(4,1)@0, f32[4,5]/(1,4)@0)",
                     "aten.native_layer_norm.default(f32[3,4]/(4,1)@0, [4], None, None, 1e-05)"]
    transposed = traced(lambda: F.linear(x.t().contiguous().t(), w, b))
    assert transposed != calls[:1] and "(1,3)" in transposed[0]


def test_only_calls_that_can_round_are_kept():
    x = torch.randn(4, 8)
    calls = traced(lambda: (x + x, x * 3, x / 7, x.sqrt(), x.t().contiguous(), x.max(), x > 0,
                            x.relu(), torch.cat([x, x]), x.to(torch.bfloat16)))
    assert calls == []
    calls = traced(lambda: (x.add(x, alpha=2), x.exp(), x.sum(), x.softmax(-1), x @ x.t()))
    assert [c.split("(")[0] for c in calls] == ["aten.add.Tensor", "aten.exp.default", "aten.sum.default",
                                                "aten._softmax.default", "aten.mm.default"]
    assert traced(lambda: torch.arange(10).sum()) == []  # integer arithmetic is exact


def test_layouts_and_line_offsets_are_part_of_a_call_size_one_strides_are_not():
    base = torch.randn(64, 16)
    a = traced(lambda: base[:, ::2].exp())[0]
    b = traced(lambda: base[:, ::2].contiguous().exp())[0]
    assert a == "aten.exp.default(f32[64,8]/(16,2)@0)" and b == "aten.exp.default(f32[64,8]/(8,1)@0)"
    assert traced(lambda: base[1:].sum())[0] == "aten.sum.default(f32[63,16]/(16,1)@0)"
    assert traced(lambda: base[:, 1:].sum())[0].endswith("@4)")  # one float into the 64-byte line
    # size-1 dimensions: their stride is no layout; for TensorIterator and layer norm, no shape
    row = torch.randn(1, 4, 16)
    assert traced(lambda: row.as_strided((1, 4, 16), (7, 16, 1)).sum()) == traced(lambda: row.sum())
    assert traced(lambda: row.exp()) == traced(lambda: row[0].exp())
    assert traced(lambda: row.softmax(-1)) != traced(lambda: row[0].softmax(-1))  # not blind: dim count


def test_tracing_changes_no_result(tiny_model):
    s = tiny_model.cfg.image_size
    image = torch.randn(1, 3, s, s)
    with torch.inference_mode():
        plain = tiny_model.step(tiny_model.encode_frame(image), [], None, exact=True)
    out = io.StringIO()
    with torch.inference_mode(), aten_trace.AtenTrace(out):
        step = tiny_model.step(tiny_model.encode_frame(image), [], None, exact=True)
    assert len(aten_trace.calls(out.getvalue())) > 100
    assert torch.equal(step.mask_logits, plain.mask_logits) and torch.equal(step.points, plain.points)


def test_the_kernel_report_reads_aten_traces(capsys):
    """kernel_trace.py --level aten compares these lines like the libraries' calls: alignment
    dropped for the problem, the official code's unread classification head explained."""
    common = "aten.mm.default(f32[50,256]/(256,1)@0, f32[256,2]/(1,256)@16)"
    head = ["aten.addmm.default(f32[256]/(1)@0, f32[50,256]/(256,1)@0, f32[256,256]/(1,256)@0)"] * 2
    head.append("aten.addmm.default(f32[2]/(1)@0, f32[50,256]/(256,1)@0, f32[256,2]/(1,256)@0)")
    assert kernel_trace.report([common] + head, [common]) is True
    assert "cls_prediction_head" in capsys.readouterr().out
    moved = common.replace("@16", "@32")
    assert kernel_trace.report([common], [moved]) is True  # same problem; the offset is reported
    assert "same offsets within a 64-byte line: no (1 calls differ)" in capsys.readouterr().out
    assert kernel_trace.report([common], [common.replace("(1,256)", "(256,1)")]) is False


def test_layer_norm_is_compared_on_the_contiguous_copy_it_makes():
    """layer_norm_cpu makes its input contiguous first: a permuted or expanded input and a
    contiguous one are the same problem; a different shape is not."""
    x = torch.randn(4, 8, 16)
    permuted = traced(lambda: F.layer_norm(x.permute(1, 0, 2), [16]))
    expanded = traced(lambda: F.layer_norm(x[:1].transpose(0, 1).expand(8, 4, 16), [16]))
    contiguous = traced(lambda: F.layer_norm(x.permute(1, 0, 2).contiguous(), [16]))
    assert permuted == expanded == contiguous == ["aten.native_layer_norm.default(f32[8,4,16]/(64,16,1)@0, [16], "
                                                  "None, None, 1e-05)"]
    assert traced(lambda: F.layer_norm(x, [16])) != contiguous
    assert traced(lambda: x.permute(1, 0, 2).exp()) != traced(lambda: x.permute(1, 0, 2).contiguous().exp())


def test_tables_the_official_code_makes_again_are_explained_only_when_made_here_too(capsys):
    polar = "aten.polar.default(f32[4096,64]/(64,1)@0, f32[4096,64]/(64,1)@0)"
    table = "aten.sin.default(f32[64,64,16]/(2048,32,2)@0)"
    batched = "aten.sin.default(f32[50,64,64,16]/(131072,2048,32,2)@0)"
    data = "aten.sin.default(f32[50,2,128]/(256,128,1)@0)"  # the prompt encoding: not a table
    assert kernel_trace.report([polar] * 5 + [batched] * 3, [polar, table]) is True
    out = capsys.readouterr().out
    assert "official x4: constant tables" in out and "official x3: the memory encoder's sine table" in out
    assert kernel_trace.report([polar] * 2, [data]) is False  # never made here: a difference
    assert kernel_trace.report([data] * 2, [data]) is False  # data, not a table
    assert kernel_trace.report([batched], [polar]) is False


def test_the_memorys_tables_are_unread_when_only_step_0_is_traced(capsys):
    """The official code makes the memory's sine table as it encodes step 0's memory; this project
    when step 1 reads it. Traced to step 0 only, that is no difference; traced further, the table
    must be made here too."""
    batched = "aten.sin.default(f32[50,64,64,16]/(131072,2048,32,2)@0)"
    dim_t = "aten.pow.Scalar(10000.0, f32[32]/(1)@0)"
    assert kernel_trace.report([batched, dim_t], [], steps=1) is True
    assert "first read at step 1" in capsys.readouterr().out
    assert kernel_trace.report([batched, dim_t], [], steps=2) is False

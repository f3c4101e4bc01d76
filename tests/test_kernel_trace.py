"""scripts/reference/kernel_trace.py: what it keeps of each oneMKL / oneDNN call, and what it reports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts" / "reference"))
import kernel_trace  # noqa: E402

SGEMM = ("MKL_VERBOSE SGEMM(T,N,768,4096,256,0x7ffe33e8b100,0x55aed103a810,256,0x55aed1040000,{ldb},"
         "0x7ffe33e8b120,0x55aed10406c0,768) 318.04us CNR:OFF Dyn:1 FastMM:1 TID:0  NThr:2")
CONV = ("onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,forward_training,src:f32:a:blocked:abcd::f0 "
        "wei:f32:ap:blocked:Acdb16a::f0 bia:undef::undef::: dst:f32:ap:blocked:aBcd16b::f0,attr-scratchpad:user,"
        "alg:convolution_direct,mb1_ic3oc8_ih64oh16kh7sh4dh0ph3_iw64ow16kw7sw4dw0pw3,{ms}")
REORDER = ("onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0 "
           "dst:f32:p:blocked:Acdb16a::f0,attr-scratchpad:user,,8x3x7x7,12.2769")


def test_a_call_keeps_its_problem_and_the_matrices_offsets_not_times_or_addresses():
    a = kernel_trace.mkl_call(SGEMM.format(ldb=12800))
    assert a == "SGEMM(T,N,768,4096,256,*,@16,256,@0,12800,*,@0,768) threads=2"
    assert kernel_trace.kernel_calls(CONV.format(ms=7.8)) == kernel_trace.kernel_calls(CONV.format(ms=0.1))
    assert kernel_trace.kernel_calls("MKL_VERBOSE oneMKL 2024.0 Update 2 Product build\n" + REORDER) == []


def test_a_different_leading_dimension_is_a_different_problem(capsys):
    official = kernel_trace.kernel_calls(SGEMM.format(ldb=12800) + "\n" + CONV.format(ms=1))
    ours = kernel_trace.kernel_calls(SGEMM.format(ldb=256) + "\n" + CONV.format(ms=2))
    assert kernel_trace.report(official, ours) is False
    assert "only official x1: SGEMM(T,N,768,4096,256,*,@,256,@,12800" in capsys.readouterr().out
    assert kernel_trace.report(official, list(reversed(official))) is True


def test_calls_that_cannot_change_results_are_named_not_counted(capsys):
    head = "MKL_VERBOSE SGEMM(T,N,{m},50,256,0x1,0x40,256,0x80,256,0x2,0xc0,{m}) 1us CNR:OFF Dyn:1 FastMM:1 TID:0 NThr:2"
    common = kernel_trace.kernel_calls(SGEMM.format(ldb=256))
    dead = kernel_trace.kernel_calls("\n".join([head.format(m=256)] * 2 + [head.format(m=2)]))
    assert kernel_trace.report(common + dead * 2, common, steps=2) is True
    assert "cls_prediction_head" in capsys.readouterr().out
    # one step's worth more than the steps traced explain is a difference
    assert kernel_trace.report(common + dead * 3, common, steps=2) is False


def test_this_torch_build_prints_what_the_trace_reads(tmp_path):
    """The verbose formats are the libraries': a torch whose oneMKL or oneDNN prints otherwise
    must fail here, not make kernel_trace.py report two empty traces as equal."""
    if "mkl" not in torch.__config__.show().lower() or not torch.backends.mkldnn.is_available():
        pytest.skip("a torch build without oneMKL or oneDNN")
    code = ("import torch; torch.set_num_threads(1); x = torch.randn(64, 96); w = torch.randn(48, 96)\n"
            "torch.nn.functional.linear(x, w); torch.nn.functional.conv2d(torch.randn(1, 3, 64, 64), torch.randn(8, 3, 7, 7), stride=4, padding=3)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env=dict(os.environ, MKL_VERBOSE="1", ONEDNN_VERBOSE="1")).stdout
    calls = kernel_trace.kernel_calls(out)
    assert any(c.startswith("SGEMM(T,N,48,64,96,") for c in calls), calls
    assert any(c.startswith("onednn cpu,convolution,") and c.endswith("mb1_ic3oc8_ih64oh16kh7sh4dh0ph3_iw64ow16kw7sw4dw0pw3")
               for c in calls), calls

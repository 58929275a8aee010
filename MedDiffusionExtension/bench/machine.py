"""The machine the benchmark runs on, and the arithmetic it can do at best: a large matrix product and a large 3x3
convolution (the operation that dominates every network here), in float32 and bf16, timed on the device. Networks'
achieved FLOP/s are reported against these measured peaks, not against a data-sheet number."""

from __future__ import annotations

import os
import platform

import torch

from .timing import spread, time_call

MATMUL_SIZE = 2048  # 17 GFLOP per product
# (batch, channels, height, width), channels -> channels, 3x3: the widths and sizes of the networks' levels; the
# fastest is the peak (wider convolutions reuse more of each loaded value). 9.7 GFLOP per call each.
CONV_SHAPES = ((4, 64, 128, 128), (1, 128, 128, 128), (1, 256, 64, 64))
# bf16 without native units falls back to slow kernels (a 2048 product took 119 s on this project's AVX2 CPU, 0.1
# GFLOP/s): there the rate is measured on shapes 8x and 16x smaller in work.
EMULATED_MATMUL_SIZE, EMULATED_CONV_SHAPES = 256, ((1, 64, 64, 64),)


def describe(device: torch.device) -> dict:
    from ..device import CPU, CUDA, cuda_index

    facts = {"device": str(device), "platform": platform.platform(), "processor": platform.processor() or "unknown",
             "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
             "cpu": CPU.name(), "cpu_native_bf16": CPU.has_native_bf16()}
    if device.type == "cuda":
        facts["gpu"] = CUDA.name(cuda_index(device))
    return facts


def peak_flops(device: torch.device, dtypes=(torch.float32, torch.bfloat16), repeats: int = 3) -> dict:
    """{"matmul fp32": {"gflops": best, ...spread of seconds}, "conv3x3 fp32": ..., ...} on `device`."""
    from ..device import CPU

    results = {}
    for dtype in dtypes:
        label = "fp32" if dtype == torch.float32 else "bf16"
        emulated = dtype == torch.bfloat16 and device.type == "cpu" and not CPU.has_native_bf16()
        size, shapes = (EMULATED_MATMUL_SIZE, EMULATED_CONV_SHAPES) if emulated else (MATMUL_SIZE, CONV_SHAPES)
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        results[f"matmul {label}"] = _rate(lambda: a @ b, 2 * size ** 3, repeats)
        rates = []
        for batch, channels, height, width in shapes:
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(device, dtype, memory_format=torch.channels_last)
            x = torch.randn(batch, channels, height, width, device=device, dtype=dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                rate = _rate(lambda: conv(x), 2 * batch * channels * channels * 9 * height * width, repeats)
            rates.append(dict(rate, shape=[batch, channels, height, width]))
        results[f"conv3x3 {label}"] = max(rates, key=lambda rate: rate["gflops"])
    return results


def _rate(function, flops: int, repeats: int) -> dict:
    function()  # warm-up: kernel selection, allocation
    seconds = spread(time_call(function)[0] for _ in range(repeats))
    return {"gflops": flops / seconds["min"] / 1e9, "seconds": seconds}

"""Choosing where and in which precision to run.

`auto` picks CUDA, then Apple MPS, then the CPU; under a multi-process torchrun launch `auto` and `cuda` mean
cuda:LOCAL_RANK, so that every worker of one command line gets its own GPU. Precision `auto` is bf16 autocast on
GPUs with native bf16 (compute capability 8.0+), fp16 on older GPUs, full precision elsewhere; for inference
(`inference_precision`) also bf16 on CPUs with native bf16 units (AMX or AVX512-BF16) unless the model's card
forbids it.

Every question asked of CUDA goes through `CUDA`, and every question about the CPU's bf16 units through `CPU`: two
small objects that tests replace with a fake GPU or CPU.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Optional

import torch

from .errors import InputError
from .precision import PRECISIONS
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# cuDNN has bf16 kernels only from Ampere on; below it torch.cuda.is_bf16_supported() still says True (emulation).
NATIVE_BF16_CAPABILITY = (8, 0)


class CudaQueries:
    """The CUDA facts and the one CUDA setting this package uses."""

    def is_available(self) -> bool:
        return torch.cuda.is_available()

    def device_count(self) -> int:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def current_device(self) -> int:
        return torch.cuda.current_device()

    def capability(self, index: int) -> tuple[int, int]:
        return tuple(torch.cuda.get_device_capability(index))

    def name(self, index: int) -> str:
        return torch.cuda.get_device_name(index)

    def set_device(self, index: int) -> None:
        torch.cuda.set_device(index)


CUDA = CudaQueries()


class CpuQueries:
    """What the CPU offers for reduced precision. Without AMX or AVX512-BF16 units, oneDNN emulates bf16 through
    float32 and conversions cost more than they save (measured on this project's AVX2 machine: bf16 autocast
    slower than float32 for every network, see docs/benchmarks.md)."""

    def has_native_bf16(self) -> bool:
        cpu = getattr(torch, "cpu", None)
        checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(check() for check in checks if check is not None)

    def name(self) -> str:
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
        return f"{capability} CPU" + (" with native bf16" if self.has_native_bf16() else "")


CPU = CpuQueries()


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def launch_local_rank() -> Optional[int]:
    """LOCAL_RANK of a multi-process torchrun launch; None for a plain single process."""
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
        local = os.environ.get("LOCAL_RANK")
        return int(local) if world > 1 and local not in (None, "") else None
    except ValueError:
        raise InputError("WORLD_SIZE / LOCAL_RANK are not whole numbers; launch with torchrun or unset them") from None


def resolve_device(name: str = "auto", *, local_rank: Optional[int] = None) -> torch.device:
    """The torch device for a device name.

    local_rank (default: the torchrun LOCAL_RANK when several processes were launched) turns `auto` and bare `cuda`
    into cuda:local_rank and makes that the process's current CUDA device; an explicit cuda:N is kept as given.
    """
    name = (name or "auto").strip().lower()
    local_rank = launch_local_rank() if local_rank is None else local_rank
    if name == "auto":
        if CUDA.is_available():
            name = "cuda"
        elif _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not CUDA.is_available():
            raise InputError(f"device {name!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
        count = CUDA.device_count()
        if device.index is None and local_rank is not None:
            if local_rank >= count:
                raise InputError(f"LOCAL_RANK {local_rank} but this machine has {count} CUDA GPU(s); "
                                 f"use --nproc_per_node {count} or fewer")
            device = torch.device("cuda", local_rank)
            # Without this, anything that uses the current device (cuDNN handles, caches) would open GPU 0 too.
            CUDA.set_device(local_rank)
        if device.index is not None and device.index >= count:
            raise InputError(f"device {name!r} does not exist: this machine has {count} CUDA GPU(s)")
    elif device.type == "mps" and not _mps_available():
        raise InputError("device 'mps' was asked for but Apple MPS is not available; use --device cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def cuda_index(device: torch.device) -> int:
    """The GPU a cuda device means (bare `cuda` is the current device)."""
    return CUDA.current_device() if device.index is None else device.index


def has_native_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and CUDA.capability(cuda_index(device)) >= NATIVE_BF16_CAPABILITY


def autocast_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for `precision` on `device`; None means full float32.

    auto: bf16 on GPUs with native bf16, fp16 on older GPUs, float32 on the CPU and MPS. An explicit bf16 on a GPU
    without native bf16 is refused (it would run emulated, slower than float32); fp16/bf16 are refused on MPS.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if has_native_bf16(device) else torch.float16
    if device.type == "mps":
        raise InputError(f"precision {precision} is not supported on Apple MPS; use auto or fp32")
    if precision == "bf16" and device.type == "cuda" and not has_native_bf16(device):
        major, minor = CUDA.capability(cuda_index(device))
        raise InputError(f"{device} (compute capability {major}.{minor}) has no native bf16; use fp16, fp32 or auto")
    if precision == "bf16" and device.type == "cpu" and not CPU.has_native_bf16():
        # Allowed: it is how bf16's effect on quality is measured on such a machine; only the speed suffers.
        warnings.warn("bf16 on this CPU (no AMX or AVX512-BF16) is emulated and runs slower than fp32; "
                      "use --precision auto or fp32 for speed")
    return _DTYPES[precision]


def inference_precision(device: torch.device, precision: str = "auto", cpu_bf16_allowed: bool = True) -> str:
    """The precision an inference run uses: `auto` on a CPU becomes bf16 where the CPU has native bf16 and the
    model allows it (its card's inference.cpu_bf16, set from the quality guard), else fp32; anything else is
    returned unchanged (autocast_dtype resolves `auto` on GPUs). Training keeps float32 on CPUs (autocast_dtype)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto" or device.type != "cpu":
        return precision
    return "bf16" if cpu_bf16_allowed and CPU.has_native_bf16() else "fp32"


# Layout per device type. channels_last (NHWC) is what oneDNN's and cuDNN's fastest convolutions read: measured
# lossless and faster for every network on this project's CPU (docs/benchmarks.md); on CUDA it is what tensor-core
# kernels read under autocast. MPS is left contiguous: not measured here.
CHANNELS_LAST_DEVICES = ("cpu", "cuda")


def uses_channels_last(device: torch.device) -> bool:
    return device.type in CHANNELS_LAST_DEVICES


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, enabled: bool = True, precision: str = "auto"):
    """Autocast for `precision` on `device` (see autocast_dtype); enabled=False is fp32."""
    dtype = autocast_dtype(device, precision if enabled else "fp32")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def available_devices() -> list[tuple[str, str]]:
    """(id, human label) pairs for a device menu: auto, cpu, each GPU by name, mps."""
    devices = [("auto", "Auto (GPU if available)"), ("cpu", "CPU")]
    for index in range(CUDA.device_count() if CUDA.is_available() else 0):
        devices.append((f"cuda:{index}", f"cuda:{index} — {CUDA.name(index)}"))
    if _mps_available():
        devices.append(("mps", "Apple GPU (MPS)"))
    return devices


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()

"""What every clbench compute process sets before it starts: a trajectory job, meta-training, a benchmark."""

from __future__ import annotations

import ctypes
import functools
import sys

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on a 64-bit system.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = 1 << 30


def check_device(device: str, local: bool = True) -> None:
    """Raise a UsageError unless ``device`` names a torch device clbench runs on (cpu, cuda, cuda:N) and,
    when the work runs in this machine (``local``), torch can reach it here. Checked before any work:
    otherwise a typo or a machine without a GPU would fail every job, one by one, after the data load."""
    if device == "cpu":
        return  # the default: no torch import (``clbench run --dry-run`` stays quick)
    import torch

    from clbench.errors import UsageError

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"device {device!r}: not a torch device (use cpu, cuda or cuda:N)") from None
    if d.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r}: clbench runs on cpu or cuda")
    if d.type == "cpu" or not local:
        return
    n = torch.cuda.device_count()
    if n == 0:
        raise UsageError(f"device {device!r}: torch sees no CUDA device on this machine (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda or 'none'}); use --device cpu, or check the driver and "
                         "CUDA_VISIBLE_DEVICES")
    if d.index is not None and d.index >= n:
        raise UsageError(f"device {device!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")


def configure(threads: int, device: str = "cpu") -> None:
    """Torch's intra-op thread count for this process, an allocator that keeps freed memory, and the
    device's settings (``use_device``)."""
    import torch

    torch.set_num_threads(threads)
    keep_freed_memory()
    use_device(device)


def use_device(device: str) -> None:
    """On CUDA: cuDNN's deterministic algorithms in float32, and a fresh peak-memory count.

    Left to itself cuDNN may pick non-deterministic backward algorithms (a resumed meta-training would
    then miss the uninterrupted run's bits, which checkpoints promise per device) and runs float32
    convolutions in TF32 on Ampere and later (10 mantissa bits: frozen features and accuracies would
    drift from the CPU's and the reference code's float32). Matrix products already default to float32.
    Both cost speed; the settings are process-wide, as the job processes are. The CPU needs nothing.
    """
    if not device.startswith("cuda"):
        return
    import torch

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.reset_peak_memory_stats(torch.device(device))  # each job reports its own peak


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks of up to 32 MB for reuse instead of returning them to the system.

    PyTorch's CPU allocator is plain malloc and free, one call per tensor. glibc serves a large block
    with a fresh mmap and unmaps it when freed, so a loop that frees and re-allocates its activations
    page-faults them in again every time: 27,000 minor faults (105 MB of zeroed pages) per second-order
    paper-size ANML outer step, 0.12 s of its 1.05 s on the development CPU. PyTorch's CPU tuning guide
    preloads jemalloc or tcmalloc for this; two mallopt calls give the same reuse with nothing to install.
    The price: a process holds on to up to 1 GB of freed heap (the trim threshold) instead of returning it.
    Process-wide and idempotent; returns whether it applied (False off glibc, e.g. macOS or musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # A fixed threshold also turns off glibc's own adjustment, which raises it only to the largest block
    # freed so far (and the trim threshold to twice that): too late and too little for varied activations.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))

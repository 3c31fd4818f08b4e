"""The process's memory allocator, set for loops that free and re-allocate large activations."""

from __future__ import annotations

import ctypes
import functools
import sys

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on a 64-bit system.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks of up to 32 MB for reuse instead of returning them to the system.

    PyTorch's CPU allocator is plain malloc and free, one call per tensor. glibc serves a large block
    with a fresh mmap and unmaps it when freed, so a loop that frees and re-allocates its activations
    page-faults them in again every time (a paper-size ANML outer step frees and re-allocates about 100 MB
    of activations). PyTorch's CPU tuning guide
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

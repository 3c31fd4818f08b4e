"""What every clbench compute process sets before it starts: a trajectory job, meta-training, a benchmark."""

from __future__ import annotations


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
    from clbench.fast.memory import keep_freed_memory

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

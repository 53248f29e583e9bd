"""Where the tensors live: the `device` setting, mixed precision on that device, and timing.

`device` in params.yaml is `auto` (CUDA when available, else CPU), `cpu`, `cuda` or
`cuda:<index>`. Precision is what a checkpoint was trained with: `fp32`, or `bf16`
autocast. On a CUDA device without bf16 support, bf16 falls back to fp16 autocast, and
training then scales the loss (`grad_scaler`) so small fp16 gradients do not vanish.
"""
from __future__ import annotations

import contextlib
import platform
import re

import torch

PRECISIONS = ("fp32", "bf16")
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch.device a `device` setting means on this machine."""
    if isinstance(name, torch.device):
        return name
    name = name or "auto"
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:<index>")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                           "use device: auto or cpu, or install a CUDA build of torch (docs/WORKFLOW.md, GPU)")
    return torch.device(name)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: float32, no autocast)."""
    if precision == "fp32":
        return None
    if precision != "bf16":
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(precision: str, device: torch.device | str = "cpu"):
    """Autocast to the precision's dtype on the device's type, or a no-op for float32."""
    device = torch.device(device)
    dtype = amp_dtype(precision, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16 autocast (a pass-through otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(precision, device) == torch.float16)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's weights (every step moves batches there, never the model)."""
    return next(model.parameters()).device


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock reading covers the work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def cpu_fields() -> dict[str, str]:
    """The first processor's /proc/cpuinfo fields (model name, flags, ...); empty where there is none."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def machine_info(device: torch.device) -> dict:
    """What a timing ran on: CPU model and its bf16 matrix features, threads, and the GPU if one was used.
    Absolute times only compare within one machine; record this beside every one."""
    fields = cpu_fields()
    flags = set(fields.get("flags", "").split())
    return dict(cpu=fields.get("model name") or platform.processor() or platform.machine(),
                cpu_features=sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"}),
                threads=torch.get_num_threads(), device=describe(device), torch=torch.__version__)

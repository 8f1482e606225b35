"""Host -> device transfers that do not stall the host."""
from __future__ import annotations

import numpy as np
import torch


def to_device(values, device, dtype=torch.long) -> torch.Tensor:
    """Host values (a list, a numpy array or a CPU tensor) as a `dtype` tensor on `device`: on CUDA
    through pinned memory and a non-blocking copy (a copy from pageable memory first waits for the
    stream to drain, which would keep the host from running ahead of the GPU); elsewhere a plain
    tensor, which may share memory with an array or tensor `values` (read it only)."""
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    if torch.device(device).type != "cuda":
        if isinstance(values, torch.Tensor):
            return values.to(device=device, dtype=dtype)
        return torch.tensor(values, dtype=dtype, device=device)
    if isinstance(values, torch.Tensor):
        pinned = torch.empty(values.shape, dtype=dtype, pin_memory=True)
        pinned.copy_(values)      # one host copy, converting the dtype on the way
    else:
        pinned = torch.tensor(values, dtype=dtype, pin_memory=True)
    # the caching host allocator keeps `pinned` from reuse until this copy has run
    return pinned.to(device, non_blocking=True)

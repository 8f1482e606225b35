"""Host -> device transfers that do not stall the host."""
from __future__ import annotations

import torch


def tensor_to_device(t: torch.Tensor, device, dtype=torch.long) -> torch.Tensor:
    """A host tensor on `device`, through pinned memory on CUDA (see to_device)."""
    if torch.device(device).type != "cuda" or t.device.type != "cpu":
        return t.to(device, dtype)
    return t.to(dtype).pin_memory().to(device, non_blocking=True)


def to_device(values, device, dtype=torch.long) -> torch.Tensor:
    """A host list as a device tensor: on CUDA through pinned memory and a non-blocking copy (a copy
    from pageable memory first waits for the stream to drain, which would keep the host from
    running ahead of the GPU); elsewhere a plain tensor."""
    if torch.device(device).type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)

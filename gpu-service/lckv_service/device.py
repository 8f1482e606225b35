"""Host -> device transfers that do not stall the host."""
from __future__ import annotations

import torch


def to_device(values, device, dtype=torch.long) -> torch.Tensor:
    """A host list as a device tensor: on CUDA through pinned memory and a non-blocking copy (a copy
    from pageable memory first waits for the stream to drain, which would keep the host from
    running ahead of the GPU); elsewhere a plain tensor."""
    if torch.device(device).type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)

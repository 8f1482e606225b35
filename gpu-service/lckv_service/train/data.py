"""Token shards: flat uint16 files of token ids (documents separated by <|endoftext|>), read by memmap."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError


class TokenShard:
    """A uint16 token file; `get_batch` samples random windows of block_size + 1 tokens."""

    def __init__(self, path: str | Path, block_size: int, vocab_size: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"token shard {self.path} does not exist (run scripts/tokenize_corpus.py)",
                              param="train.data_dir")
        size = self.path.stat().st_size
        if size % 2:
            raise ConfigError(f"token shard {self.path} has an odd size; expected uint16 ids", param="train.data_dir")
        self.num_tokens = size // 2
        self.block_size = block_size
        if self.num_tokens < block_size + 2:
            raise ConfigError(f"token shard {self.path} holds {self.num_tokens} tokens, fewer than "
                              f"block_size + 2 = {block_size + 2}", param="train.block_size")
        if vocab_size is not None:
            top = int(self.tokens().max())
            if top >= vocab_size:
                raise ConfigError(f"token shard {self.path} has id {top} >= vocab_size {vocab_size}",
                                  param="model.vocab_size")

    def tokens(self) -> np.memmap:
        # A fresh memmap per use: a long-lived one keeps growing the process's resident pages (nanoGPT).
        return np.memmap(self.path, dtype=np.uint16, mode="r")

    def get_batch(self, batch_size: int, generator: torch.Generator, device: str | torch.device = "cpu"):
        """x, y: LongTensor[batch_size, block_size] with y = x shifted by one token."""
        T = self.block_size
        starts = torch.randint(self.num_tokens - T - 1, (batch_size,), generator=generator).tolist()
        data = self.tokens()
        xy = torch.from_numpy(np.stack([data[s:s + T + 1].astype(np.int64) for s in starts]))  # [B, T+1]
        x, y = xy[:, :-1], xy[:, 1:]
        if torch.device(device).type == "cuda":
            return (x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True))
        return x.contiguous(), y.contiguous()

    def windows(self, block_size: int, max_tokens: int | None = None):
        """Consecutive non-overlapping windows of block_size + 1 tokens (evaluation), as int64 arrays."""
        data = self.tokens()
        n = self.num_tokens if max_tokens is None else min(self.num_tokens, max_tokens + 1)
        for s in range(0, n - block_size - 1 + 1, block_size):
            yield np.asarray(data[s:s + block_size + 1], dtype=np.int64)

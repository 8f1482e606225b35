"""One token budget for several concurrent training runs that must finish within a wall-clock limit.

Each run measures its own training throughput over a few early iterations (while its peers run on
the same GPU) and publishes it to a shared folder, then keeps training while it polls for its peers'
reports. Once all have reported (or withdrawn, or the wait timed out), every run derives the same
max_iters from the same files: the slowest rate times the time left. A run that waited idle would
hand its peers the whole GPU and inflate their measurements, so nobody blocks unless the LR warmup
is about to end: the budget is then fixed while the schedule is still independent of max_iters.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger("lckv.train")


@dataclass
class BudgetSync:
    folder: Path
    name: str
    peers: int                  # runs sharing the budget, this one included
    minutes: float              # wall-clock limit of each run
    measure_from: int = 5       # iterations before this one include start-up and warm-up
    measure_to: int = 25
    safety: float = 0.85        # evals, the final save and contention noise come out of this margin
    timeout_s: float = 240.0    # a peer that never reports (hung) must not hold the others forever

    def __post_init__(self):
        if self.peers < 1:
            raise ConfigError("--peers must be >= 1", param="peers")
        if not 0 <= self.measure_from < self.measure_to:
            raise ConfigError("budget measurement needs 0 <= measure_from < measure_to", param="measure_to")
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._t_from = None
        self._published_at = None
        self.decided = False

    @property
    def published(self) -> bool:
        return self._published_at is not None

    def _publish(self, report: dict) -> None:
        tmp = self.folder / f".{self.name}.tmp"
        tmp.write_text(json.dumps(report), encoding="utf-8")
        tmp.replace(self.folder / f"{self.name}.json")
        self._published_at = time.time()

    def observe(self, it: int, now: float, t_start: float, tokens_per_iter: int, reserve_s: float) -> None:
        """Call after iterations measure_from and measure_to (device synchronized): publishes the rate."""
        if it == self.measure_from:
            self._t_from = now
        elif it == self.measure_to and self._t_from is not None and not self.published:
            rate = (self.measure_to - self.measure_from) * tokens_per_iter / max(now - self._t_from, 1e-9)
            self._publish({"name": self.name, "tokens_per_s": rate, "elapsed_s": now - t_start,
                           "tokens_per_iter": tokens_per_iter, "reserve_s": reserve_s})

    def withdraw(self) -> None:
        """A run that ends (or fails) before reporting says so, so that its peers stop waiting for it."""
        if not self.published:
            self._publish({"name": self.name, "withdrawn": True})
        self.decided = True

    def poll(self, block: bool = False, wait_until: float | None = None) -> int | None:
        """After publishing: the common max_iters once every peer has reported (None until then).
        block=True waits (at most timeout_s after publishing, never past wait_until)."""
        if self.decided or not self.published:
            return None
        limit = self._published_at + self.timeout_s
        if wait_until is not None:
            limit = min(limit, wait_until)
        while True:
            reports = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.folder.glob("*.json"))]
            if len(reports) >= self.peers or time.time() > limit:
                break
            if not block:
                return None
            time.sleep(0.2)
        if len(reports) < self.peers:
            log.warning("budget: only %d of %d runs reported in time; using those", len(reports), self.peers)
        self.decided = True
        rates = [r for r in reports if not r.get("withdrawn")]
        slowest = min(r["tokens_per_s"] for r in rates)
        tokens_per_iter = rates[0]["tokens_per_iter"]
        if any(r["tokens_per_iter"] != tokens_per_iter for r in rates):
            raise ConfigError("runs sharing a budget must use the same batch_size * block_size * grad_accum",
                              param="sync_budget")
        left = self.minutes * 60 - max(r["elapsed_s"] for r in rates) - max(r["reserve_s"] for r in rates)
        max_iters = self.measure_to + max(0, math.floor(slowest * max(left, 0.0) * self.safety / tokens_per_iter))
        log.info("budget: slowest %s tok/s of %d runs, %.0fs left -> max_iters %d (%s tokens)",
                 f"{slowest:,.0f}", len(rates), left, max_iters, f"{max_iters * tokens_per_iter:,}")
        return max_iters

"""GPU benchmark suite for the LCKV service (issue 7).

`bench/run.py` is the entry point; each suite module exposes `run(ctx)` and writes one JSON
object per measurement through `ctx.rec`. Everything here imports and runs on CPU with tiny
shapes (`--tiny`), which is how the unit tests exercise it.
"""

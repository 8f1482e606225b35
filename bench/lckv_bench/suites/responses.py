"""Responses: turn N's time to first token when a chain continues by `previous_response_id`, vs a stock
client sending the whole history statelessly (issue 16), on the GPU service alone, driven over HTTP
with exactly the upstream requests the Worker makes for each:

- chain (src/session/object.ts, planFullHistory's "reuse"): the chain's object holds the history's
  cache blob; a turn sends only its new input (`kind: chat`, `messages: [the input]`, `return_blob:
  true`) with that blob and keeps the blob that comes back. The chain is built that way turn by turn
  (each turn a new user input of up to `turn_tokens` tokens and `max_tokens` 1, as
  bench/responses_ttft.mjs builds it through the Worker); the timed turn is a short question
  continuing the chain's head, and every repeat continues that same head (its blob is not replaced).
- stateless (src/generation.ts statelessTurn: a chat completion without a session): the whole history
  plus the question as messages, no blob, `return_blob: false`. The service's `--max-prompt-tokens` is
  raised so that it is accepted at all (by default it refuses prompts over its cache capacity).

A GPU host has no Node, so the Worker cannot run there: this suite is the GPU row, and the Worker's
own share is what bench/responses_ttft.mjs measures on CPU through the whole stack.

One row per history size: history_tokens (the chain head's tokens_seen), TTFT medians over the repeats
(request sent -> first token frame; a reply with no token frame counts to its end), prompt_tokens and
cached_tokens as the service's start frame reports them, the first greedy ids of both (`same_tokens`:
they must agree, since a session's blob holds exactly the conversation's canonical tokens). Sizes run
smallest first and the chain grows from one to the next. A stateless request that would outlive the
suite's budget is cut: `stateless_over_ms` is then a lower bound of its TTFT. The rows also go to a
markdown table `responses-ttft-<label>.md` next to the JSONL file, in the CPU table's columns.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import torch

from ..common import Context, median
from ..service import MODEL_ID, SERVICE_SRC, ServerProcess, free_port, generate, make_model_folder, make_prompts, \
    request_body

HISTORY, TINY_HISTORY = (1000, 4000, 16000), (48, 160)
VARIANTS = ("lckv-w2",)
CONTEXT, TINY_CONTEXT = 2048, 512   # random-weight folders' max positions (TinyLlama's own context)
QUESTION = "question {i}: what happened next?"
BUILD = {"max_tokens": 1, "temperature": 0.0}     # each turn that builds the history
TIMED = {"max_tokens": 4, "temperature": 0.0}     # the timed turn N
SLACK_S = 2.0


class Failed(Exception):
    """A request the service refused or failed: the row's error."""


class OutOfTime(Exception):
    """The suite's budget ran out while building the history."""


def default_label(device: torch.device) -> str:
    # never "cpu": responses-ttft-cpu.md is the Worker path's table (bench/responses_ttft.mjs)
    return "gpu" if device.type == "cuda" else f"{device.type}-service"


def chat(messages: list[dict], sampling: dict, return_blob: bool, i: int) -> dict:
    return {"request_id": f"bench-responses-{i}", "model": MODEL_ID, "kind": "chat", "messages": messages,
            "sampling": sampling, "return_blob": return_blob}


def ttft_s(r: dict) -> float:
    return (r["frames"][0][0] if r["frames"] else r["end"]) - r["sent"]


def token_ids(r: dict) -> list[int]:
    return [t for _, ids in r["frames"] for t in ids]


class Session:
    """One HTTP client and the chain being built: its messages (as the Worker's chain keeps them:
    each input and the reply's text) and the blob of its head."""

    def __init__(self, http, url: str, folder: Path):
        self.http, self.url, self.folder = http, url, folder
        self.history: list[dict] = []
        self.blob: bytes | None = None
        self.head: dict | None = None         # the head turn's done.session counters
        self.turns, self.build_s, self.requests = 0, 0.0, 0

    async def call(self, request: dict, blob: bytes | None, limit: float) -> dict:
        self.requests += 1
        r = await asyncio.wait_for(generate(self.http, self.url, request_body(request, blob)), max(0.1, limit))
        if "error" in r:
            raise Failed(f"{r['status']} {str(r['error'])[:300]}")
        return r

    @property
    def seen(self) -> int:
        return self.head["tokens_seen"] if self.head else 0

    async def grow(self, target: int, turn_tokens: int, budget) -> None:
        """New turns until the chain holds `target` tokens (each sends its input with the head's blob)."""
        while self.seen < target:
            text = make_prompts(self.folder, 1, max(8, min(turn_tokens, target - self.seen)), seed=self.turns)[0]
            msg = {"role": "user", "content": text}
            t = time.perf_counter()
            try:
                r = await self.call(chat([msg], BUILD, True, self.requests), self.blob, budget.left() - SLACK_S)
            except (asyncio.TimeoutError, TimeoutError):
                raise OutOfTime(f"suite time budget spent while building the history at {self.seen} tokens") from None
            self.build_s += time.perf_counter() - t
            self.history += [msg, {"role": "assistant", "content": r["text"]}]
            self.blob, self.head = r["blob"], r["done"]["session"]
            self.turns += 1


def run(ctx: Context) -> None:
    sizes = sorted(set(ctx.history or (TINY_HISTORY if ctx.tiny else HISTORY)))
    repeats = ctx.repeats or 3
    label = ctx.label or default_label(ctx.device)
    extra = ctx.server_args.split() if ctx.server_args else []
    dtype = torch.float32 if ctx.device.type == "cpu" else torch.bfloat16
    if ctx.model_folder:
        cases = [(None, None)]
    else:
        cases = [(s, v) for s in ctx.shapes for v in (ctx.variants or VARIANTS) if v != "hf-llama"]
    md = Path(ctx.rec.path).parent / f"responses-ttft-{label}.md" if ctx.rec.path else None
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(ctx.rec.write("responses", **row))
        if md is not None:   # rewritten per row: a run cut short keeps the table of what it measured
            md.write_text(render_md(rows, label), encoding="utf-8")

    for shape, variant in cases:
        base = dict(label=label, shape=shape, variant=variant, repeats=repeats,
                    model=Path(ctx.model_folder).name if ctx.model_folder else f"{shape} {variant}, random weights",
                    dtype=str(dtype).removeprefix("torch."), server_args=" ".join(extra))
        if ctx.budget.left() < 10:
            for n in sizes:
                emit(dict(base, target_tokens=n, status="skipped", reason="suite time budget spent"))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(ctx.model_folder) if ctx.model_folder else make_model_folder(
                Path(tmp) / "model", shape, variant, TINY_CONTEXT if ctx.tiny else CONTEXT, dtype, ctx.device)
            _serve(ctx, folder, sizes, repeats, extra, base, emit)


def _serve(ctx: Context, folder: Path, sizes: list[int], repeats: int, extra: list[str], base: dict, emit) -> None:
    turn_tokens = min(1000, max(16, sizes[0] // 2))
    max_prompt = sizes[-1] + 2 * turn_tokens + 256   # the largest stateless prompt, with room
    flags = ["--max-slots", "2", "--max-prompt-tokens", str(max_prompt), "--log-level", "WARNING", *extra]
    log = Path(tempfile.gettempdir()) / f"responses-{os.getpid()}.log"
    server = ServerProcess(folder, ctx.device.type, free_port(), flags, SERVICE_SRC, log)
    done: set[int] = set()
    try:
        t = time.perf_counter()
        server.wait_ready(timeout=max(1.0, ctx.budget.left()))
        info = server.models()[0]
        base = dict(base, context_window=info["context_window"], max_prompt_tokens=max_prompt, turn_tokens=turn_tokens,
                    server_start_s=round(time.perf_counter() - t, 2))
        asyncio.run(_drive(ctx, server.url, folder, sizes, repeats, base, emit, done))
    except Exception as e:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else None
        for n in sizes:
            if n not in done:
                emit(dict(base, target_tokens=n, status="error", error=f"{type(e).__name__}: {e}"[:300],
                          server_log_tail=tail))
                done.add(n)
    finally:
        server.stop()


async def _drive(ctx: Context, url: str, folder: Path, sizes: list[int], repeats: int, base: dict, emit,
                 done: set[int]) -> None:
    import aiohttp
    budget = ctx.budget
    per_token = {"build": 0.0, "stateless": 0.0}    # seconds per token seen so far: what is left would cost

    def need(after: int, seen: int) -> float:
        """Seconds the larger sizes' history and first stateless request would take (a 1.5x margin: a
        history past the cache window builds slower than the part before it)."""
        larger = [n for n in sizes if n > after]
        return 1.5 * sum((n - seen) * per_token["build"] + n * per_token["stateless"] for n in larger)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        s = Session(http, url, folder)
        for target in sizes:
            row = dict(base, target_tokens=target)
            if budget.left() < 5:
                emit(dict(row, status="skipped", reason="suite time budget spent"))
                done.add(target)
                continue
            try:
                seen0, t0 = s.seen, s.build_s
                await s.grow(target, base["turn_tokens"], budget)
            except OutOfTime as e:
                emit(dict(row, status="skipped", reason=str(e)))
                done.add(target)
                continue
            if s.seen > seen0:
                per_token["build"] = (s.build_s - t0) / (s.seen - seen0)
            chain, stateless, over, refused = [], [], None, None
            for i in range(repeats):
                q = {"role": "user", "content": QUESTION.format(i=i)}
                chain.append(await s.call(chat([q], TIMED, True, s.requests), s.blob, budget.left()))
                if over is not None or refused is not None:
                    continue
                est = ttft_s(stateless[-1]) if stateless else 0.0
                if stateless and est + need(target, s.seen) + SLACK_S > budget.left():
                    continue   # one more repeat would cost a larger size its measurement
                limit = budget.left() - SLACK_S
                try:
                    r = await s.call(chat(s.history + [q], TIMED, False, s.requests), None, limit)
                except (asyncio.TimeoutError, TimeoutError):
                    over = limit
                    continue
                except Failed as e:
                    refused = str(e)
                    continue
                stateless.append(r)
                per_token["stateless"] = ttft_s(r) / r["start"]["prompt_tokens"]
            emit(dict(row, status="ok", **_summary(s, chain, stateless, over, refused)))
            done.add(target)


def _summary(s: Session, chain: list[dict], stateless: list[dict], over: float | None, refused: str | None) -> dict:
    ms = lambda xs: round(1e3 * median(xs), 2) if xs else None   # noqa: E731
    c0 = chain[0]["start"]
    out = dict(history_tokens=s.seen, cache_tokens=s.head["cache_tokens"], evicted_tokens=s.head["evicted_tokens"],
               blob_bytes=len(s.blob or b""), build_turns=s.turns, build_s=round(s.build_s, 3),
               chain_ttft_ms=ms([ttft_s(r) for r in chain]),
               chain_ttft_ms_runs=[round(1e3 * ttft_s(r), 2) for r in chain],
               chain_prompt_tokens=c0["prompt_tokens"], chain_cached_tokens=c0["cached_tokens"],
               chain_new_tokens=c0["prompt_tokens"] - c0["cached_tokens"], chain_token_ids=token_ids(chain[0]),
               stateless_ttft_ms=ms([ttft_s(r) for r in stateless]),
               stateless_ttft_ms_runs=[round(1e3 * ttft_s(r), 2) for r in stateless],
               stateless_repeats=len(stateless), stateless_over_ms=round(1e3 * over) if over is not None else None,
               stateless_refused=refused)
    if stateless:
        st = stateless[0]["start"]
        out.update(stateless_prompt_tokens=st["prompt_tokens"], stateless_cached_tokens=st["cached_tokens"],
                   stateless_token_ids=token_ids(stateless[0]),
                   same_tokens=all(token_ids(a) == token_ids(b) for a, b in zip(chain, stateless)))
    return out


# ---- the markdown table --------------------------------------------------------------------------
def _n(x) -> str:
    return "—" if x is None else f"{x:,}"


def _stateless_cell(r: dict) -> str:
    if r.get("stateless_ttft_ms") is not None:
        return f"{r['stateless_ttft_ms']:,.0f}"
    if r.get("stateless_over_ms") is not None:
        return f"> {r['stateless_over_ms']:,}"
    return "—"


def _note(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('reason') or r.get('error')}"
    parts = [f"median of {r['repeats']} / {r['stateless_repeats']}",
             f"chain: {_n(r['chain_new_tokens'])} new + {_n(r['chain_cached_tokens'])} cached tokens"]
    if r.get("stateless_prompt_tokens") is not None:
        parts.append(f"stateless: {_n(r['stateless_prompt_tokens'])} prompt tokens, "
                     f"{_n(r['stateless_cached_tokens'])} cached")
        parts.append("same greedy tokens" if r["same_tokens"] else "greedy tokens DIFFER")
    if r.get("stateless_over_ms") is not None:
        parts.append("stateless cut at the suite's time budget")
    if r.get("stateless_refused"):
        parts.append(f"stateless failed: {r['stateless_refused'][:120]}")
    return "; ".join(parts)


def _worker_note(device: str) -> str:
    if device.startswith("cpu"):
        return ("No Worker, Durable Object or SSE is in these times: `responses-ttft-cpu.md` "
                "(`bench/responses_ttft.mjs`) times the same turns through the whole stack, the difference is their share.")
    return ("The Worker does not run on this host (no Node there), so these times hold no Worker, Durable Object or "
            "SSE; their share is what the CPU row through the whole stack shows (`responses-ttft-cpu.md`, "
            "`bench/responses_ttft.mjs`).")


def render_md(rows: list[dict], label: str) -> str:
    rows = [r for r in rows if r.get("suite") == "responses" and r.get("label") == label]
    lines = ["| device | history tokens | TTFT by previous_response_id (ms) | TTFT, whole history stateless (ms) | note |",
             "|---|---|---|---|---|"]
    for r in rows:
        hist = _n(r.get("history_tokens")) if r["status"] == "ok" else f"({_n(r['target_tokens'])})"
        chain = f"{r['chain_ttft_ms']:,.0f}" if r.get("chain_ttft_ms") is not None else "—"
        lines.append(f"| {r['device']} | {hist} | {chain} | {_stateless_cell(r)} | {_note(r)} |")
    first = rows[0] if rows else {}
    lines += ["", f"The GPU service alone (`python -m lckv_service serve`; model {first.get('model')}, "
              f"{first.get('dtype')}, cache window {_n(first.get('context_window'))} tokens), driven over HTTP with "
              "exactly the upstream requests the Worker makes: a `previous_response_id` continuation sends only the "
              "new input with the chain's cache blob; a stateless chat completion sends the whole history without "
              f"one (the service's `--max-prompt-tokens` raised to {_n(first.get('max_prompt_tokens'))} so that it "
              f"is accepted at all). {_worker_note(str(first.get('device', '')))} Medians over the repeats (chain / stateless "
              "requests that ran); TTFT = request sent -> first token frame. Produced by "
              f"`bench/run.py --suite responses` (bench/lckv_bench/suites/responses.py), run {first.get('run_id')}."]
    return "\n".join(lines) + "\n"

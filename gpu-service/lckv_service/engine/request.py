"""One generation request as the engine sees it: its tokens, phase, slot and output channel.

Torch-free: the runner attaches its own per-request objects (e.g. the torch.Generator) as `runner_state`.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # keep this module (and the scheduler) torch-free
    from ..sampling import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "finished_stopped"    # end-of-turn token or stop string
    FINISHED_LENGTH = "finished_length"      # max_tokens reached
    FINISHED_ABORTED = "finished_aborted"    # caller went away
    FINISHED_ERROR = "finished_error"

    @property
    def finished(self) -> bool:
        return self not in _LIVE     # checked per sampled token: a set lookup, not a string test

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI finish_reason ('stop' | 'length'); None where no completion is reported."""
        return {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH: "length"}.get(self)


_LIVE = frozenset((RequestStatus.WAITING, RequestStatus.RUNNING))


class Phase(enum.Enum):
    PREFILL = "prefill"      # feeding the prompt; sample after its last token
    DECODE = "decode"        # feeding the last sampled token; sample again
    FINALIZE = "finalize"    # feeding the turn's canonical tail (last token, end-of-turn); no sampling


@dataclass(slots=True)
class Event:
    """What the engine hands the server, in order: delta*, then done or error."""
    type: str                                  # "delta" | "done" | "error"
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    state: Any = None                          # done + return_blob: the turn's CacheState
    error: BaseException | None = None
    # done: the turn's counts, read from the request when it ended (the server's copy of the request
    # may live in another process)
    completion_tokens: int = 0                 # sampled ids, end-of-turn included
    tokens_seen: int = 0                       # tokens the sequence has covered
    cache_len: int = 0                         # tokens its cache holds (sinks + recent)


@dataclass(frozen=True)
class Turn:
    """What a stateless request over the whole conversation tokenizes this turn to, given the reply:
    the ids a session turn's cache is brought to before its blob is exported. Plain data, so it can
    travel to an engine in another process; `tok` is that engine's ChatTokenizer."""
    kind: str                                  # "chat" | "completion"
    messages: tuple = ()                       # chat: the turn's messages
    continues: bool = False                    # chat: after a restored cache
    prompt: str = ""                           # completion: the prompt text
    start: tuple[int, ...] = ()                # completion: ids before the prompt's (a document start)

    def canonical_ids(self, tok, reply: str) -> list[int]:
        if self.kind == "chat":
            return tok.encode_chat([*self.messages, {"role": "assistant", "content": reply}], False, self.continues)
        return [*self.start, *tok.encode_prompt(self.prompt + reply)]


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]                      # the turn's new tokens (after the restored cache)
    params: "SamplingParams"
    emit: Callable[[Event], None] = lambda e: None
    restore_state: Any = None                  # CacheState the turn starts from (sessions); kept for restarts
    restored_tokens: int = 0                   # tokens in that state's cache (sinks + recent)
    cached_tokens: int = 0                     # tokens the state covers (tokens_seen)
    return_blob: bool = False
    turn: Turn | None = None                   # return_blob: the canonical-ids rule of this turn
    arrival: float = field(default_factory=time.monotonic)

    # engine/scheduler state
    status: RequestStatus = RequestStatus.WAITING
    phase: Phase = Phase.PREFILL
    slot: int | None = None
    cache_len: int = 0                         # tokens in the slot (after evictions)
    tokens_seen: int = 0                       # tokens ever appended to this sequence
    pending: list[int] = field(default_factory=list)  # tokens still to feed
    fed_this_turn: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    unsent_ids: list[int] = field(default_factory=list)
    truncate: int = 0                          # finalize: drop this many tail tokens first
    restart: bool = False                      # finalize: reload the turn's start state, re-feed everything
    last_evict_at: int = -1                    # len(fed_this_turn) at this turn's last eviction
    retokenized: bool = False                  # the reply's canonical ids differed from the sampled ids
    rebuilt: bool = False                      # ... and the turn was re-fed from its start state
    final_status: RequestStatus | None = None  # how generation ended (kept through FINALIZE)
    in_flight: int = 0                         # launched steps sampling its next tokens (not yet known)
    lookahead: bool = False                    # fed_this_turn[-1] is that in-flight token
    text_stream: Any = None
    runner_state: Any = None
    first_token_time: float | None = None
    last_token_time: float | None = None

    def __post_init__(self):
        self.pending = list(self.prompt_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1]

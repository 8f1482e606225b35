// One Durable Object per (tenant, session): the transcript and condensed cache of a conversation,
// one turn at a time. A turn is committed (transcript + reply + new blob, one transaction) only
// after the GPU service finished it completely; a failed, cancelled or cut-off turn changes nothing.
import { DurableObject } from "cloudflare:workers";
import { ChainStore } from "../chain/store";
import type { ChainTurn, ConversationRecord, ItemRecord, PageQuery } from "../chain/types";
import { loadConfig } from "../config";
import { ApiError } from "../errors";
import type { Env } from "../env";
import { logEvent } from "../log";
import { generateBalanced } from "../upstream/balanced";
import type { GenerateStream } from "../upstream/client";
import { errorEvent, toPublicError, UpstreamError } from "../upstream/errors";
import { jsonFrame } from "../upstream/frames";
import type { ChatMessage, DoneEvent } from "../upstream/types";
import { chainMessages, commitChainTurn } from "./chain-turn";
import type { SessionInfo, SessionRpc, TurnReply, TurnRequest } from "./rpc";
import { SessionStore, type SessionState } from "./store";
import { planFullHistory, planTurn, rebuildPlan, trimToFit, type TurnPlan } from "./transcript";

const BLOB_REFUSED = new Set(["blob_model_mismatch", "blob_version", "blob_invalid"]);
const MAX_TRIMS = 6;
const BUSY_GRACE_MS = 1_500;
const CANCELLED_TURN_WAIT_MS = 5_000;

const busyError = () =>
  new ApiError(409, "Another turn of this session is in progress; wait for it to finish.", { code: "session_busy", shouldRetry: false });

export class SessionObject extends DurableObject<Env> implements SessionRpc {
  private store!: SessionStore;
  private chain!: ChainStore;
  private state: SessionState = { meta: null, transcript: [] };
  /** The turn in progress (one at a time), from its start to its release. */
  private running: { id: string; abort: AbortController; settled: Promise<void> } | null = null;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    void ctx.blockConcurrencyWhile(async () => {
      this.store = new SessionStore(ctx.storage);
      this.chain = new ChainStore(ctx.storage.sql);
      this.state = this.store.load();
    });
  }

  async turn(req: TurnRequest): Promise<TurnReply> {
    if (this.running) await this.windDown(this.running);
    if (this.running) return { ok: false, error: busyError().toJSON() };
    // Running from here, before any await (one turn at a time), not only once the GPU service has
    // answered: a turn asked while this one waits for its first frame gets the same grace.
    const ac = new AbortController();
    const turnId = crypto.randomUUID();
    let released!: () => void;
    const settled = new Promise<void>((resolve) => (released = resolve));
    this.running = { id: turnId, abort: ac, settled };
    try {
      const cfg = loadConfig(this.env);
      const upstream = cfg.upstream;
      const hasBlob = (this.state.meta?.blob_bytes ?? 0) > 0;
      let plan: TurnPlan;
      if (req.chain) {
        const composed = chainMessages(this.chain, req.chain, this.state.meta?.evicted_tokens ?? 0);
        if ("fork" in composed) {
          this.running = null;
          released();
          return { ok: false, fork: composed.fork };
        }
        plan = planFullHistory(this.state.transcript, composed.messages, hasBlob);
      } else plan = planTurn(this.state.transcript, req.messages, hasBlob);
      const call = (p: TurnPlan) =>
        generateBalanced(upstream, { request_id: req.requestId, model: req.model, kind: "chat", messages: p.send,
          sampling: req.sampling, return_blob: true }, p.useBlob ? this.store.loadBlob() : null, ac.signal);
      let gen: GenerateStream | null = null;
      for (let attempt = 0; !gen; attempt++) {
        try {
          gen = await call(plan);
        } catch (err) {
          if (!(err instanceof UpstreamError)) throw err;
          if (BLOB_REFUSED.has(err.code ?? "") && plan.useBlob) {
            // The blob was made for another model/layout, in another format version, or fails its
            // checks: rebuild from the transcript instead of failing (the client did nothing wrong).
            plan = rebuildPlan(plan);
            continue;
          }
          // Rebuilding a long conversation (no blob) can exceed what one prefill takes: send its
          // recent part, as the sliding cache would hold it. A single message too long still fails.
          const mayTrim = req.chain?.allowTrim ?? true;
          const trimmed = err.code === "context_length_exceeded" && mayTrim && !plan.useBlob && attempt < MAX_TRIMS
            ? trimToFit(plan, err.limits ?? null) : null;
          if (!trimmed) throw err;
          logEvent("info", { event: "session_trim", request_id: req.requestId, from: plan.send.length, to: trimmed.send.length });
          plan = trimmed;
        }
      }
      // A byte stream (what RPC carries reliably); writes are not awaited, so the turn runs (and
      // commits) at the GPU service's pace even if the client reads slowly.
      const { readable, writable } = new IdentityTransformStream();
      const ttl = req.chain ? cfg.responseTtlSeconds : cfg.sessionTtlSeconds;
      void this.pump(gen, plan, req, writable, ac, ttl, released);
      return { ok: true, turnId, start: gen.start, stream: readable };
    } catch (err) {
      this.running = null;
      released();
      return { ok: false, error: toPublicError(err).toJSON() };
    }
  }

  /**
   * A client that aborts a reply and asks again at once must not get a 409 for its own dead turn: its
   * disconnect can reach us just after the new turn does, and cancelling the upstream call takes a
   * moment. So wait a short grace for the running turn to end; if it was cancelled by then, wait for
   * it to wind down. A turn that is really still running still gets the 409, a little later.
   */
  private async windDown(running: NonNullable<SessionObject["running"]>): Promise<void> {
    const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
    await Promise.race([running.settled, sleep(BUSY_GRACE_MS)]);
    if (this.running === running && running.abort.signal.aborted) {
      await Promise.race([running.settled, sleep(CANCELLED_TURN_WAIT_MS)]);
    }
  }

  /** Forward deltas to the caller; commit when the upstream turn is complete; release the lock. */
  private async pump(gen: GenerateStream, plan: TurnPlan, req: TurnRequest, writable: WritableStream<Uint8Array>,
    ac: AbortController, ttlSeconds: number, released: () => void): Promise<void> {
    const writer = writable.getWriter();
    let clientGone = false;
    // The caller cancelled its end (client disconnected): stop the GPU work, commit nothing.
    writer.closed.catch(() => ac.abort());
    ac.signal.addEventListener("abort", () => (clientGone = true));
    const write = (obj: unknown) => void writer.write(jsonFrame(obj)).catch(() => {});
    let reply = "";
    let outcome = "incomplete";
    try {
      for await (const ev of gen.events) {
        if (clientGone) break;
        if (ev.type === "delta") {
          reply += ev.text;
          write(ev);
        } else if (ev.type === "error") {
          write(ev);
          outcome = `error:${ev.error.code ?? "unknown"}`;
        } else {
          const { blob, ...done } = ev;
          this.commit(plan, req.model, reply, done, blob, ttlSeconds, req.chain);
          outcome = "committed";
          write(done);
        }
      }
      if (clientGone && outcome === "incomplete") outcome = "client_closed";
    } catch (err) {
      const apiErr = toPublicError(err);
      outcome = clientGone ? "client_closed" : `error:${apiErr.code ?? "internal_error"}`;
      if (!clientGone) write(errorEvent(apiErr));
    } finally {
      this.running = null;
      released();
      await writer.close().catch(() => {});
      logEvent("info", { event: "session_turn", request_id: req.requestId, mode: plan.mode, outcome });
    }
  }

  /**
   * The caller's client went away. Cancelling the returned stream is not always seen promptly
   * across RPC (only at the next write), so the route also says so explicitly.
   */
  async cancelTurn(turnId: string): Promise<void> {
    if (this.running?.id === turnId) this.running.abort.abort();
  }

  private commit(plan: TurnPlan, model: string, reply: string, done: Omit<DoneEvent, "type">,
    blob: Uint8Array[], ttlSeconds: number, chain?: ChainTurn): void {
    const now = Date.now();
    const prev = this.state.meta;
    const transcript = [...plan.conversation, { role: "assistant" as const, content: reply }];
    const meta = {
      model,
      turns: (prev?.turns ?? 0) + 1,
      tokens_seen: done.session?.tokens_seen ?? 0,
      cache_tokens: done.session?.cache_tokens ?? 0,
      evicted_tokens: done.session?.evicted_tokens ?? 0,
      last_cached_tokens: done.usage.cached_tokens,
      blob_bytes: blob.reduce((n, b) => n + b.length, 0),
      created_at: prev?.created_at ?? now,
      updated_at: now,
    };
    this.store.commit({ transcript, keep: Math.min(plan.keep, this.state.transcript.length), blob, meta },
      chain ? () => commitChainTurn(this.chain, chain, reply, done, now) : undefined);
    this.state = { meta, transcript };
    // Idle expiry: each commit moves the single alarm to now + TTL.
    void this.ctx.storage.setAlarm(now + ttlSeconds * 1000);
  }

  async info(sessionId: string): Promise<SessionInfo | null> {
    const m = this.state.meta;
    if (!m) return null;
    const ttl = loadConfig(this.env).sessionTtlSeconds;
    return {
      id: sessionId, object: "session", model: m.model, turns: m.turns, messages: this.state.transcript.length,
      tokens_seen: m.tokens_seen, cache_tokens: m.cache_tokens, cached_tokens: m.last_cached_tokens,
      cache_bytes: m.blob_bytes, evicted_tokens: m.evicted_tokens,
      created_at: Math.floor(m.created_at / 1000), updated_at: Math.floor(m.updated_at / 1000),
      expires_at: Math.floor(m.updated_at / 1000) + ttl,
    };
  }

  /** Delete the session. "busy" while a turn runs (the turn would re-create it). */
  async remove(): Promise<"deleted" | "not_found" | "busy"> {
    if (this.running) return "busy";
    if (!this.state.meta) return "not_found";
    await this.clear();
    return "deleted";
  }

  private async clear(): Promise<void> {
    await this.store.clear();
    this.chain = new ChainStore(this.ctx.storage.sql);
    this.state = { meta: null, transcript: [] };
  }

  /** Blob rows in storage (for operators and tests: proves the chunking). */
  async blobRows(): Promise<number> {
    return this.store.blobRowCount();
  }

  override async alarm(): Promise<void> {
    // The alarm is moved on every commit, so when it fires the session has been idle for the TTL.
    if (this.running) {
      const cfg = loadConfig(this.env);
      await this.ctx.storage.setAlarm(Date.now() + (this.chain.isEmpty() ? cfg.sessionTtlSeconds : cfg.responseTtlSeconds) * 1000);
      return;
    }
    await this.clear();
    logEvent("info", { event: "session_expired" });
  }

  // ---- Responses and Conversations: this object holds one chain or conversation (src/chain/) ----

  private touch(): void {
    void this.ctx.storage.setAlarm(Date.now() + loadConfig(this.env).responseTtlSeconds * 1000);
  }

  async response(id: string) {
    return this.chain.response(id);
  }
  async deleteResponse(id: string): Promise<boolean> {
    return this.chain.deleteResponse(id);
  }

  /** A response's history, or a conversation's items (by its id); null when it does not exist here. */
  async history(id: string): Promise<ChatMessage[] | null> {
    if (id.startsWith("conv_")) return this.isConversation(id) ? this.chain.messages() : null;
    return this.chain.historyOf(id);
  }

  /** A page of a conversation's items or of a response's input items (by its id). */
  async items(q: PageQuery, id: string) {
    if (id.startsWith("conv_")) return this.isConversation(id) ? this.chain.items(q) : null;
    return this.chain.items(q, id);
  }

  private isConversation(id: string): boolean {
    return this.chain.conversation()?.id === id;
  }

  async createConversation(conv: ConversationRecord, items: ItemRecord[]): Promise<void> {
    this.ctx.storage.transactionSync(() => this.chain.createConversation(conv.id, conv.metadata, items, conv.created_at));
    this.touch();
  }

  async conversation(id: string): Promise<ConversationRecord | null> {
    return this.isConversation(id) ? this.chain.conversation() : null;
  }

  async updateConversation(id: string, metadata: Record<string, string>): Promise<ConversationRecord | null> {
    if (!this.isConversation(id)) return null;
    this.chain.setMetadata(metadata);
    this.touch();
    return this.chain.conversation();
  }

  /** The conversation's items change only between turns: "busy" while one runs. */
  private conversationOp<T extends string>(id: string, op: () => boolean, done: T): T | "not_found" | "busy" {
    if (!this.isConversation(id)) return "not_found";
    if (this.running) return "busy";
    return op() ? done : "not_found";
  }

  async deleteConversation(id: string): Promise<"deleted" | "not_found" | "busy"> {
    const r = this.conversationOp(id, () => true, "deleted");
    if (r === "deleted") await this.clear();
    return r;
  }

  async addItems(conversationId: string, items: ItemRecord[]): Promise<"added" | "not_found" | "busy"> {
    const r = this.conversationOp(conversationId, () => (this.ctx.storage.transactionSync(() => this.chain.appendItems(items, null)), true), "added");
    if (r === "added") this.touch();
    return r;
  }

  async item(conversationId: string, itemId: string): Promise<ItemRecord | null> {
    return this.isConversation(conversationId) ? this.chain.item(itemId) : null;
  }

  async deleteItem(conversationId: string, itemId: string): Promise<"deleted" | "not_found" | "busy"> {
    return this.conversationOp(conversationId, () => this.chain.deleteItem(itemId), "deleted");
  }
}

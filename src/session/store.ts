// A session's rows in its Durable Object's SQLite: one meta row, the transcript (one row per
// message) and the cache blob in 1 MiB chunks (SQLite DO values are capped at 2 MB). A turn's new
// transcript, blob and counters are written in ONE transaction, so a reader never sees a blob that
// does not match its transcript.
import { concatBytes } from "../upstream/frames";
import type { ChatMessage, Role } from "../upstream/types";

export const BLOB_ROW_BYTES = 1024 * 1024;

export interface SessionMeta {
  model: string;
  turns: number;
  tokens_seen: number;
  cache_tokens: number;
  evicted_tokens: number;
  last_cached_tokens: number;
  blob_bytes: number;
  created_at: number; // unix ms
  updated_at: number; // unix ms
}

export interface SessionState {
  meta: SessionMeta | null; // null: the session does not exist (yet)
  transcript: ChatMessage[];
}

export interface CommitInput {
  transcript: ChatMessage[];
  keep: number; // leading transcript rows already stored and unchanged
  blob: Uint8Array[];
  meta: SessionMeta;
}

const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), model TEXT NOT NULL,
     turns INTEGER NOT NULL, tokens_seen INTEGER NOT NULL, cache_tokens INTEGER NOT NULL,
     evicted_tokens INTEGER NOT NULL, last_cached_tokens INTEGER NOT NULL, blob_bytes INTEGER NOT NULL,
     created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, role TEXT NOT NULL, content TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS blob_chunks (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)`,
];

export class SessionStore {
  constructor(private readonly storage: DurableObjectStorage) {
    this.init();
  }

  private get sql(): SqlStorage {
    return this.storage.sql;
  }

  private init(): void {
    for (const stmt of SCHEMA) this.sql.exec(stmt);
  }

  load(): SessionState {
    const row = this.sql.exec<Record<string, SqlStorageValue>>("SELECT * FROM meta WHERE id = 1").toArray()[0];
    if (!row) return { meta: null, transcript: [] };
    const { id: _id, ...meta } = row;
    const transcript = this.sql
      .exec<{ role: string; content: string }>("SELECT role, content FROM messages ORDER BY seq")
      .toArray()
      .map((m) => ({ role: m.role as Role, content: m.content }));
    return { meta: meta as unknown as SessionMeta, transcript };
  }

  loadBlob(): Uint8Array[] {
    return this.sql
      .exec<{ data: ArrayBuffer }>("SELECT data FROM blob_chunks ORDER BY seq")
      .toArray()
      .map((r) => new Uint8Array(r.data));
  }

  /** `also` writes more rows (a response chain's) in the same transaction. */
  commit(input: CommitInput, also?: () => void): void {
    const { transcript, keep, blob, meta } = input;
    this.storage.transactionSync(() => {
      also?.();
      this.sql.exec("DELETE FROM messages WHERE seq >= ?", keep);
      for (let i = keep; i < transcript.length; i++) {
        this.sql.exec("INSERT INTO messages (seq, role, content) VALUES (?, ?, ?)", i, transcript[i]!.role, transcript[i]!.content);
      }
      this.sql.exec("DELETE FROM blob_chunks");
      const bytes = concatBytes(blob);
      for (let off = 0, seq = 0; off < bytes.length; off += BLOB_ROW_BYTES, seq++) {
        this.sql.exec("INSERT INTO blob_chunks (seq, data) VALUES (?, ?)", seq, bytes.slice(off, off + BLOB_ROW_BYTES));
      }
      this.sql.exec(
        `INSERT OR REPLACE INTO meta (id, model, turns, tokens_seen, cache_tokens, evicted_tokens, last_cached_tokens,
           blob_bytes, created_at, updated_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        meta.model, meta.turns, meta.tokens_seen, meta.cache_tokens, meta.evicted_tokens, meta.last_cached_tokens,
        meta.blob_bytes, meta.created_at, meta.updated_at,
      );
    });
  }

  /** Remove everything (rows, tables, alarm); the store stays usable. */
  async clear(): Promise<void> {
    await this.storage.deleteAlarm();
    await this.storage.deleteAll();
    this.init();
  }

  blobRowCount(): number {
    return this.sql.exec<{ n: number }>("SELECT COUNT(*) AS n FROM blob_chunks").one().n;
  }
}

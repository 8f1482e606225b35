// A response chain's (or conversation's) rows in its Durable Object's SQLite, beside the session
// rows (session/store.ts): the chain's items in order (its linear history: inputs and outputs),
// one row per stored response (which items end its history), and one meta row. Forks live in
// their own object, so a chain's history never branches: a response's history is every item up
// to its output.
import type { ChatMessage, Role } from "../upstream/types";
import type { ConversationRecord, ItemRecord, Page, PageQuery, ResponseRecord } from "./types";

const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS chain_meta (id INTEGER PRIMARY KEY CHECK (id = 1), conversation_id TEXT,
     metadata TEXT NOT NULL, head TEXT, next_seq INTEGER NOT NULL, created_at INTEGER NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS chain_items (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
     content TEXT NOT NULL, response_id TEXT, created_at INTEGER NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS chain_responses (id TEXT PRIMARY KEY, end_seq INTEGER NOT NULL, record TEXT NOT NULL)`,
];

interface MetaRow {
  conversation_id: string | null;
  metadata: string;
  head: string | null;
  next_seq: number;
  created_at: number;
}

type ItemRow = { seq: number; id: string; role: string; content: string; created_at: number };
const toItem = (r: ItemRow): ItemRecord => ({ id: r.id, role: r.role as Role, content: r.content, created_at: r.created_at });

export class ChainStore {
  constructor(private readonly sql: SqlStorage) {
    for (const stmt of SCHEMA) this.sql.exec(stmt);
  }

  private meta(): MetaRow | null {
    return this.sql.exec<MetaRow & Record<string, SqlStorageValue>>("SELECT * FROM chain_meta WHERE id = 1").toArray()[0] ?? null;
  }

  isEmpty(): boolean {
    return this.meta() === null;
  }

  head(): string | null {
    return this.meta()?.head ?? null;
  }

  /** Whether the latest item is the output of the head response (no item added or deleted after it). */
  headIsLast(): boolean {
    const m = this.meta();
    if (!m?.head) return false;
    const end = this.sql.exec<{ end_seq: number }>("SELECT end_seq FROM chain_responses WHERE id = ?", m.head).toArray()[0];
    const last = this.sql.exec<{ s: number | null }>("SELECT MAX(seq) AS s FROM chain_items").one().s;
    return end !== undefined && end.end_seq === last;
  }

  conversation(): ConversationRecord | null {
    const m = this.meta();
    if (!m?.conversation_id) return null;
    return { id: m.conversation_id, metadata: JSON.parse(m.metadata) as Record<string, string>, created_at: m.created_at };
  }

  createConversation(id: string, metadata: Record<string, string>, items: ItemRecord[], now: number): void {
    this.sql.exec("INSERT INTO chain_meta (id, conversation_id, metadata, head, next_seq, created_at) VALUES (1, ?, ?, NULL, 0, ?)",
      id, JSON.stringify(metadata), now);
    this.appendItems(items, null);
  }

  setMetadata(metadata: Record<string, string>): void {
    this.sql.exec("UPDATE chain_meta SET metadata = ? WHERE id = 1", JSON.stringify(metadata));
  }

  /** The whole history, oldest first. */
  messages(): ChatMessage[] {
    return this.sql.exec<{ role: string; content: string }>("SELECT role, content FROM chain_items ORDER BY seq").toArray()
      .map((m) => ({ role: m.role as Role, content: m.content }));
  }

  /** A stored response's history: every item up to and including its output (null: no such response). */
  historyOf(responseId: string): ChatMessage[] | null {
    const end = this.endSeq(responseId);
    if (end === null) return null;
    return this.sql.exec<{ role: string; content: string }>("SELECT role, content FROM chain_items WHERE seq <= ? ORDER BY seq", end)
      .toArray().map((m) => ({ role: m.role as Role, content: m.content }));
  }

  private endSeq(responseId: string): number | null {
    return this.sql.exec<{ end_seq: number }>("SELECT end_seq FROM chain_responses WHERE id = ?", responseId).toArray()[0]?.end_seq ?? null;
  }

  response(id: string): ResponseRecord | null {
    const row = this.sql.exec<{ record: string }>("SELECT record FROM chain_responses WHERE id = ?", id).toArray()[0];
    return row ? (JSON.parse(row.record) as ResponseRecord) : null;
  }

  /** Forget a response (its items stay: they are the history of the responses after it). */
  deleteResponse(id: string): boolean {
    const n = this.sql.exec("DELETE FROM chain_responses WHERE id = ?", id).rowsWritten;
    if (n > 0) this.sql.exec("UPDATE chain_meta SET head = NULL WHERE head = ?", id);
    return n > 0;
  }

  /** Append a committed turn: a fork's copied history, the input, the output and the response row. */
  writeTurn(seed: ChatMessage[], input: ItemRecord[], output: ItemRecord, record: ResponseRecord, now: number, newItemId: () => string): void {
    if (!this.meta()) {
      this.sql.exec("INSERT INTO chain_meta (id, conversation_id, metadata, head, next_seq, created_at) VALUES (1, NULL, '{}', NULL, 0, ?)", now);
    }
    this.appendItems(seed.map((m) => ({ ...m, id: newItemId(), created_at: now })), null);
    this.appendItems(input, record.id);
    const end = this.appendItems([output], record.id);
    this.sql.exec("INSERT INTO chain_responses (id, end_seq, record) VALUES (?, ?, ?)", record.id, end, JSON.stringify(record));
    this.sql.exec("UPDATE chain_meta SET head = ? WHERE id = 1", record.id);
  }

  /** Append items; returns the last one's seq. */
  appendItems(items: ItemRecord[], responseId: string | null): number {
    let seq = this.meta()!.next_seq;
    for (const it of items) {
      this.sql.exec("INSERT INTO chain_items (seq, id, role, content, response_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        seq++, it.id, it.role, it.content, responseId, it.created_at);
    }
    this.sql.exec("UPDATE chain_meta SET next_seq = ? WHERE id = 1", seq);
    return seq - 1;
  }

  item(id: string): ItemRecord | null {
    const row = this.sql.exec<ItemRow>("SELECT * FROM chain_items WHERE id = ?", id).toArray()[0];
    return row ? toItem(row) : null;
  }

  deleteItem(id: string): boolean {
    return this.sql.exec("DELETE FROM chain_items WHERE id = ?", id).rowsWritten > 0;
  }

  /** A page of items: all of them, or a response's input items (its items before its output). */
  items(q: PageQuery, responseId?: string): Page<ItemRecord> | null {
    const where: string[] = [];
    const args: SqlStorageValue[] = [];
    if (responseId !== undefined) {
      const end = this.endSeq(responseId);
      if (end === null) return null;
      where.push("response_id = ?", "seq < ?");
      args.push(responseId, end);
    }
    if (q.after !== undefined) {
      const at = this.sql.exec<{ seq: number }>("SELECT seq FROM chain_items WHERE id = ?", q.after).toArray()[0];
      if (!at) return { data: [], has_more: false };
      where.push(q.order === "asc" ? "seq > ?" : "seq < ?");
      args.push(at.seq);
    }
    const sql = `SELECT * FROM chain_items ${where.length ? `WHERE ${where.join(" AND ")}` : ""}
      ORDER BY seq ${q.order === "asc" ? "ASC" : "DESC"} LIMIT ?`;
    const rows = this.sql.exec<ItemRow>(sql, ...args, q.limit + 1).toArray();
    return { data: rows.slice(0, q.limit).map(toItem), has_more: rows.length > q.limit };
  }
}

// API keys are stored as SHA-256 hashes bound to a tenant: API_KEY_HASHES = "tenant:sha256hex,...".
// Pure helpers (Web Crypto only) so the start script can mirror devTenant() in Node.

export interface KeyEntry {
  tenant: string;
  hash: Uint8Array; // 32 bytes
}

const TENANT_RE = /^[A-Za-z0-9._-]{1,64}$/;

export async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Tenant id of a raw local-dev key (LCKV_API_KEYS): "key-" + first 12 hex of its sha256. */
export async function devTenant(rawKey: string): Promise<string> {
  return "key-" + (await sha256Hex(rawKey)).slice(0, 12);
}

export const DEFAULT_DEV_KEY = "sk-lckv-dev";

function hexToBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Parse API_KEY_HASHES; throws Error naming the bad entry's index (never its contents). */
export function parseKeyHashes(value: string): KeyEntry[] {
  const entries: KeyEntry[] = [];
  value.split(",").map((s) => s.trim()).filter(Boolean).forEach((item, i) => {
    const sep = item.lastIndexOf(":");
    const tenant = item.slice(0, sep);
    const hex = item.slice(sep + 1).toLowerCase();
    if (sep <= 0 || !TENANT_RE.test(tenant) || !/^[0-9a-f]{64}$/.test(hex)) {
      throw new Error(`API_KEY_HASHES entry ${i} is not "tenant:sha256hex"`);
    }
    entries.push({ tenant, hash: hexToBytes(hex) });
  });
  return entries;
}

/** Find the tenant of a presented key. Every entry is compared, so timing does not reveal which matched. */
export async function tenantForKey(rawKey: string, entries: KeyEntry[]): Promise<string | null> {
  const presented = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(rawKey)));
  let found: string | null = null;
  // workerd's crypto.subtle.timingSafeEqual: constant time for equal lengths (both are 32 bytes).
  for (const e of entries) if (crypto.subtle.timingSafeEqual(presented, e.hash) && found === null) found = e.tenant;
  return found;
}

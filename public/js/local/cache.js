// The in-browser engine's condensed KV cache: the w+1 cached layers' keys (before RoPE) and values
// for the kept tokens, laid out [kvLayers, capacity, kvHeads, headDim] exactly as the decode graph
// reads them. StreamingLLM policy: the first `sinks` tokens stay; when the cache is full, the oldest
// token after the sinks is dropped. Positions are in-cache indices, so eviction is a slice.
export class CondensedCache {
  constructor({ kvLayers, kvHeads, headDim, sinks, window }) {
    for (const [name, v] of Object.entries({ kvLayers, kvHeads, headDim, window })) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
    }
    if (!Number.isInteger(sinks) || sinks < 0) throw new RangeError(`sinks must be a non-negative integer, got ${sinks}`);
    if (window < 2) throw new RangeError(`window must be at least 2, got ${window}`);
    Object.assign(this, { kvLayers, kvHeads, headDim, sinks, window });
    this.capacity = sinks + window;
    this.rowSize = kvHeads * headDim; // floats per token per layer
    this.k = new Float32Array(kvLayers * this.capacity * this.rowSize);
    this.v = new Float32Array(kvLayers * this.capacity * this.rowSize);
    this.tokenIds = [];
    this.tokensSeen = 0;
  }

  get length() {
    return this.tokenIds.length;
  }

  get evicted() {
    return this.tokensSeen - this.length;
  }

  /** Bytes this cache would take in bf16 (what the server stores), for comparison with the API's numbers. */
  get bf16Bytes() {
    return 2 * 2 * this.kvLayers * this.length * this.rowSize;
  }

  /** Makes room for one more token (evicting if full); returns the in-cache position it will take. */
  reserve() {
    if (this.length === this.capacity) this.#evictOne();
    return this.length;
  }

  /** newK/newV: Float32Array [kvLayers, kvHeads, headDim], the graph's rows for the token just run. */
  append(tokenId, newK, newV) {
    const pos = this.length;
    if (pos >= this.capacity) throw new RangeError("cache is full: call reserve() before the step");
    if (newK.length !== this.kvLayers * this.rowSize || newV.length !== newK.length) {
      throw new RangeError(`new K/V rows must hold ${this.kvLayers * this.rowSize} floats, got ${newK.length}/${newV.length}`);
    }
    for (let l = 0; l < this.kvLayers; l++) {
      const src = l * this.rowSize;
      const dst = (l * this.capacity + pos) * this.rowSize;
      this.k.set(newK.subarray(src, src + this.rowSize), dst);
      this.v.set(newV.subarray(src, src + this.rowSize), dst);
    }
    this.tokenIds.push(tokenId);
    this.tokensSeen += 1;
  }

  #evictOne() {
    const r = this.rowSize;
    const from = this.sinks + 1; // drop row `sinks`, shift the rest down by one
    for (let l = 0; l < this.kvLayers; l++) {
      const base = l * this.capacity * r;
      this.k.copyWithin(base + this.sinks * r, base + from * r, base + this.capacity * r);
      this.v.copyWithin(base + this.sinks * r, base + from * r, base + this.capacity * r);
    }
    this.tokenIds.splice(this.sinks, 1);
  }

  reset() {
    this.tokenIds = [];
    this.tokensSeen = 0;
  }
}

// Turn-N time to first token: continuing a chain by previous_response_id (the chain's object sends
// only the new input with its cache blob) vs a stock client sending the whole history statelessly
// (chat completions), at several history lengths. Runs the real local stack (GPU service on CPU by
// default); writes one JSON line per measurement to stdout and a markdown table to
// bench/results/responses-ttft-<label>.md.
//   node bench/responses_ttft.mjs [--label cpu] [--history 1000,4000,16000] [--repeats 3] [--max-prompt-tokens 20000]
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ROOT } from "../scripts/stack.mjs";
import { startStack } from "../test/e2e/harness.mjs";

const { values: opts } = parseArgs({ options: {
  label: { type: "string", default: "cpu" },
  history: { type: "string", default: "1000,4000,16000" },
  repeats: { type: "string", default: "3" },
  // the service's longest new prompt (default: its cache capacity, sinks + window): raised so that the
  // stateless side can send the whole history at all (it is then prefilled through the sliding cache)
  "max-prompt-tokens": { type: "string", default: "20000" },
} });
const sizes = opts.history.split(",").map(Number);
const repeats = Number(opts.repeats);

const WORDS = "the river runs past the old mill where the miller keeps his grain and tells the children stories of the sea".split(" ");
const prose = (n) => Array.from({ length: n }, (_, i) => WORDS[i % WORDS.length]).join(" ");

async function ttft(stream) {
  const t0 = performance.now();
  for await (const ev of await stream()) {
    if (ev.type === "response.output_text.delta" || ev.choices?.[0]?.delta?.content) return performance.now() - t0;
  }
  return performance.now() - t0; // no text at all: time to the end
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const stack = await startStack({ gpuArgs: ["--max-prompt-tokens", opts["max-prompt-tokens"]] });
const rows = [];
try {
  const client = stack.client();
  const model = (await client.models.list()).data[0];
  const chunkWords = 2000; // words per turn while building the history
  for (const target of sizes) {
    // build a chain whose history holds about `target` tokens
    let prev = null;
    let seen = 0;
    const history = [];
    while (seen < target) {
      const input = prose(Math.min(chunkWords, target - seen + 10));
      const r = await client.responses.create({ model: model.id, input, max_output_tokens: 1, temperature: 0, truncation: "auto",
        ...(prev ? { previous_response_id: prev } : {}) });
      history.push({ role: "user", content: input }, { role: "assistant", content: r.output_text });
      seen = r.usage.total_tokens;
      prev = r.id;
    }
    const chain = [];
    const stateless = [];
    let refused = null;
    for (let i = 0; i < repeats; i++) {
      const q = `question ${i}: what happened next?`;
      chain.push(await ttft(() => client.responses.create({ model: model.id, input: q, previous_response_id: prev, stream: true,
        max_output_tokens: 4, temperature: 0, truncation: "auto" })));
      try {
        stateless.push(await ttft(() => client.chat.completions.create({ model: model.id, messages: [...history, { role: "user", content: q }],
          stream: true, max_tokens: 4, temperature: 0 })));
      } catch (e) {
        refused = `${e.status ?? "mid-stream"} ${e.code ?? e.message}`;
      }
    }
    const row = { label: opts.label, history_tokens: seen, chain_ttft_ms: median(chain), stateless_ttft_ms: stateless.length ? median(stateless) : null,
      stateless_refused: refused, repeats };
    console.log(JSON.stringify(row));
    rows.push(row);
  }
} finally {
  await stack.stop();
}
const fmt = (v) => (v === null ? "—" : v.toFixed(0));
const md = [`| device | history tokens | TTFT by previous_response_id (ms) | TTFT, whole history stateless (ms) | note |`, "|---|---|---|---|---|",
  ...rows.map((r) => `| ${r.label} | ${r.history_tokens} | ${fmt(r.chain_ttft_ms)} | ${fmt(r.stateless_ttft_ms)} | ${r.stateless_refused ? `stateless failed: ${r.stateless_refused}` : `median of ${r.repeats}`} |`)];
writeFileSync(join(ROOT, "bench", "results", `responses-ttft-${opts.label}.md`), `${md.join("\n")}\n`);
console.log(md.join("\n"));

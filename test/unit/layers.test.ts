// The Worker's modules depend one way: routes → services → storage/upstream → foundation (types,
// errors, config). No module imports one of a higher layer, and no import (type-only ones
// included) closes a circle.
import { describe, expect, it } from "vitest";

const sources = import.meta.glob("../../src/**/*.ts", { query: "?raw", import: "default", eager: true });

const LAYERS = ["foundation", "storage/upstream", "services", "routes"] as const;
type Layer = (typeof LAYERS)[number];

/** The layer of a module, by its path under src/ (first match wins). */
const RULES: [RegExp, Layer][] = [
  [/^(env|errors|log|text|config)\.ts$/, "foundation"],
  [/^(upstream\/types|session\/rpc|ratelimit\/rpc|auth\/keys)\.ts$/, "foundation"],
  [/^(upstream\/|session\/(store|transcript)\.ts|ratelimit\/bucket\.ts)/, "storage/upstream"],
  [/^(generation|turn)\.ts$|^session\/|^ratelimit\//, "services"],
  [/^(index\.ts|app\.ts|spec\.ts|routes\/|middleware\/|openai\/)/, "routes"],
];

const modules = new Map<string, string>(
  Object.entries(sources)
    .map(([path, text]) => [path.replace(/^.*\/src\//, ""), text] as [string, string])
    .filter(([path]) => !path.endsWith(".d.ts")),
);

function layerOf(mod: string): Layer {
  const rule = RULES.find(([re]) => re.test(mod));
  if (!rule) throw new Error(`src/${mod} has no layer: add it to RULES`);
  return rule[1];
}

function resolve(from: string, spec: string): string {
  const parts = from.split("/").slice(0, -1);
  for (const seg of spec.split("/")) {
    if (seg === "..") parts.pop();
    else if (seg !== ".") parts.push(seg);
  }
  const base = parts.join("/");
  const hit = [`${base}.ts`, `${base}/index.ts`].find((p) => modules.has(p));
  if (!hit) throw new Error(`src/${from} imports ${spec}, which is not a module of src/`);
  return hit;
}

const IMPORT = /^\s*(?:import|export)\s[^;]*?\sfrom\s+"(\.{1,2}\/[^"]+)"/gm;
const graph = new Map<string, string[]>(
  [...modules].map(([mod, text]) => [mod, [...text.matchAll(IMPORT)].map((m) => resolve(mod, m[1]!))]),
);

describe("module layers", () => {
  it("sees the whole of src/", () => {
    expect(modules.size).toBeGreaterThan(30);
    expect(graph.get("app.ts")).toContain("routes/chat.ts");
  });

  it("every import points to the same or a lower layer", () => {
    const upward: string[] = [];
    for (const [mod, deps] of graph) {
      for (const dep of deps) {
        if (LAYERS.indexOf(layerOf(dep)) > LAYERS.indexOf(layerOf(mod))) upward.push(`${mod} (${layerOf(mod)}) → ${dep} (${layerOf(dep)})`);
      }
    }
    expect(upward).toEqual([]);
  });

  it("no import cycle", () => {
    const state = new Map<string, "open" | "done">();
    const cycles: string[] = [];
    const visit = (mod: string, path: string[]) => {
      if (state.get(mod) === "done") return;
      if (state.get(mod) === "open") {
        cycles.push([...path.slice(path.indexOf(mod)), mod].join(" → "));
        return;
      }
      state.set(mod, "open");
      for (const dep of graph.get(mod)!) visit(dep, [...path, mod]);
      state.set(mod, "done");
    };
    for (const mod of graph.keys()) visit(mod, []);
    expect(cycles).toEqual([]);
  });
});

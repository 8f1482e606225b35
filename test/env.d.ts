declare module "*.yaml?raw" {
  const text: string;
  export default text;
}
declare namespace Cloudflare {
  interface Env {
    TEST_KEYS_JSON: string;
  }
}
// Vite's import.meta.glob (test/unit/layers.test.ts reads src/ through it).
interface ImportMeta {
  glob(pattern: string, options: { query: "?raw"; import: "default"; eager: true }): Record<string, string>;
}

declare module "*.yaml?raw" {
  const text: string;
  export default text;
}
declare namespace Cloudflare {
  interface Env {
    TEST_KEYS_JSON: string;
  }
}

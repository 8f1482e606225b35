// Ties our Env and main module into the runtime's `cloudflare:workers` types (env, exports).
import type { Env as AppBindings } from "./env";

declare global {
  namespace Cloudflare {
    interface Env extends AppBindings {}
    interface GlobalProps {
      mainModule: typeof import("./index");
      durableNamespaces: "SessionObject" | "RateLimiter";
    }
  }
}

// Structured one-line JSON logs. Callers pass ids, routes, counts and codes only: never keys,
// secrets, message contents or cache bytes.
export type LogLevel = "info" | "warn" | "error";

export function logEvent(level: LogLevel, fields: Record<string, unknown>): void {
  const line = JSON.stringify({ level, ts: new Date().toISOString(), ...fields });
  if (level === "error") console.error(line);
  else if (level === "warn") console.warn(line);
  else console.log(line);
}

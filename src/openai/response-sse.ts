// The Responses API's stream: typed events with a sequence_number, in OpenAI's order
// (response.created … response.completed / response.incomplete). A failure after the start is an
// `error` event then `response.failed`; a client that goes away cancels the turn.
import type { Context } from "hono";
import { streamSSE, type SSEStreamingApi } from "hono/streaming";
import type { AppEnv } from "../env";
import { toApiError } from "../errors";
import type { Turn } from "../turn";
import { eventError } from "../upstream/errors";
import { failed, finished, inProgress, outputMessage, type ResponseTemplate } from "./response-object";
import { TICK, withTicks } from "./sse";

export function responseStream(c: Context<AppEnv>, turn: Turn, id: string, template: ResponseTemplate, outputId: string,
  onFinish: (outcome: string) => void): Response {
  return streamSSE(c, async (stream: SSEStreamingApi) => {
    stream.onAbort(() => turn.cancel());
    let seq = 0;
    const emit = (type: string, fields: Record<string, unknown>) =>
      stream.writeSSE({ event: type, data: JSON.stringify({ type, sequence_number: seq++, ...fields }) });
    const at = { item_id: outputId, output_index: 0, content_index: 0 };
    const fail = async (code: string, message: string, param: string | null) => {
      await emit("error", { code, message, param });
      await emit("response.failed", { response: failed(id, template, code, message) });
    };
    let outcome = "incomplete";
    let text = "";
    try {
      await emit("response.created", { response: inProgress(id, template) });
      await emit("response.in_progress", { response: inProgress(id, template) });
      await emit("response.output_item.added", { output_index: 0, item: outputMessage(outputId, "", "in_progress") });
      await emit("response.content_part.added", { ...at, part: { type: "output_text", text: "", annotations: [], logprobs: [] } });
      for await (const ev of withTicks(turn.events)) {
        if (stream.aborted) break;
        if (ev === TICK) await stream.write(": keep-alive\n\n");
        else if (ev.type === "delta") {
          if (ev.text === "") continue;
          text += ev.text;
          await emit("response.output_text.delta", { ...at, delta: ev.text, logprobs: [] });
        } else if (ev.type === "done") {
          const body = finished(id, template, outputId, text, ev.finish_reason, ev.usage);
          await emit("response.output_text.done", { ...at, text, logprobs: [] });
          await emit("response.content_part.done", { ...at, part: body.output[0]!.content[0] });
          await emit("response.output_item.done", { output_index: 0, item: body.output[0] });
          await emit(body.status === "completed" ? "response.completed" : "response.incomplete", { response: body });
          outcome = body.status;
          return;
        } else {
          const err = eventError(ev);
          await fail(err.code ?? "server_error", err.message, err.param);
          outcome = `error:${err.code ?? "unknown"}`;
          return;
        }
      }
      if (stream.aborted) outcome = "client_closed";
      else throw new Error("turn ended without done");
    } catch (err) {
      turn.cancel();
      if (stream.aborted) outcome = "client_closed";
      else {
        const apiErr = toApiError(err);
        outcome = `error:${apiErr.code ?? "internal_error"}`;
        await fail(apiErr.code ?? "internal_error", apiErr.message, apiErr.param);
      }
    } finally {
      onFinish(stream.aborted && outcome === "incomplete" ? "client_closed" : outcome);
    }
  });
}

// The Responses API's stream: typed events with a sequence_number, in OpenAI's order
// (response.created … response.completed / response.incomplete). A failure after the start is an
// `error` event then `response.failed`; a client that goes away cancels the turn.
import type { Context } from "hono";
import type { SSEStreamingApi } from "hono/streaming";
import type { AppEnv } from "../env";
import type { Turn } from "../turn";
import { failed, finished, inProgress, outputMessage, type ResponseTemplate } from "./response-object";
import { turnStream } from "./sse";

export function responseStream(c: Context<AppEnv>, turn: Turn, id: string, template: ResponseTemplate, outputId: string,
  onFinish: (outcome: string) => void): Response {
  return turnStream(c, turn, (stream: SSEStreamingApi) => {
    let seq = 0;
    let text = "";
    const emit = (type: string, fields: Record<string, unknown>) =>
      stream.writeSSE({ event: type, data: JSON.stringify({ type, sequence_number: seq++, ...fields }) });
    const at = { item_id: outputId, output_index: 0, content_index: 0 };
    return {
      start: async () => {
        await emit("response.created", { response: inProgress(id, template) });
        await emit("response.in_progress", { response: inProgress(id, template) });
        await emit("response.output_item.added", { output_index: 0, item: outputMessage(outputId, "", "in_progress") });
        await emit("response.content_part.added", { ...at, part: { type: "output_text", text: "", annotations: [], logprobs: [] } });
      },
      delta: async (delta) => {
        text += delta;
        await emit("response.output_text.delta", { ...at, delta, logprobs: [] });
      },
      done: async (ev) => {
        const body = finished(id, template, outputId, text, ev.finish_reason, ev.usage);
        await emit("response.output_text.done", { ...at, text, logprobs: [] });
        await emit("response.content_part.done", { ...at, part: body.output[0]!.content[0] });
        await emit("response.output_item.done", { output_index: 0, item: body.output[0] });
        await emit(body.status === "completed" ? "response.completed" : "response.incomplete", { response: body });
        return body.status;
      },
      fail: async (err, code) => {   // an error event, then response.failed
        await emit("error", { code, message: err.message, param: err.param });
        await emit("response.failed", { response: failed(id, template, code, err.message) });
      },
    };
  }, onFinish);
}

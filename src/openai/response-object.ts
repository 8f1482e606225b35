// Builders for the Responses API's objects: the response (from the route's template and a turn's
// outcome), its output message, usage, and message items of inputs and conversations.
import type { ItemRecord, ResponseRecord } from "../chain/types";
import type { Usage } from "../upstream/types";
import type { MessageItemBody, OutputMessageBody, ResponseBody } from "./responses-schemas";

/** Everything of a response but its outcome; the chain stores it with the outcome. */
export type ResponseTemplate = Omit<ResponseBody, "id" | "status" | "error" | "incomplete_details" | "output" | "usage">;

export function responseUsage(u: Usage): NonNullable<ResponseBody["usage"]> {
  return {
    input_tokens: u.prompt_tokens,
    input_tokens_details: { cached_tokens: u.cached_tokens },
    output_tokens: u.completion_tokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: u.total_tokens,
  };
}

export function outputMessage(id: string, text: string, status: OutputMessageBody["status"]): OutputMessageBody {
  return { id, type: "message", status, role: "assistant", content: status === "in_progress" && text === "" ? []
    : [{ type: "output_text", text, annotations: [], logprobs: [] }] };
}

/** A response still running (the stream's first events): no output, no usage. */
export function inProgress(id: string, t: ResponseTemplate): ResponseBody {
  return { id, ...t, status: "in_progress", error: null, incomplete_details: null, output: [], usage: null };
}

export function finished(id: string, t: ResponseTemplate, outputId: string, text: string, finish: "stop" | "length", usage: Usage): ResponseBody {
  const incomplete = finish === "length";
  return {
    id, ...t,
    status: incomplete ? "incomplete" : "completed",
    error: null,
    incomplete_details: incomplete ? { reason: "max_output_tokens" } : null,
    output: [outputMessage(outputId, text, incomplete ? "incomplete" : "completed")],
    usage: responseUsage(usage),
  };
}

export function failed(id: string, t: ResponseTemplate, code: string, message: string): ResponseBody {
  return { id, ...t, status: "failed", error: { code, message }, incomplete_details: null, output: [], usage: null };
}

export const fromRecord = (r: ResponseRecord): ResponseBody =>
  finished(r.id, r.template as ResponseTemplate, r.output_item_id, r.output_text, r.finish_reason, r.usage);

export function messageItem(it: ItemRecord): MessageItemBody {
  const content = it.role === "assistant"
    ? [{ type: "output_text" as const, text: it.content, annotations: [], logprobs: [] }]
    : [{ type: "input_text" as const, text: it.content }];
  return { id: it.id, type: "message", status: "completed", role: it.role, content };
}

export function itemList(items: ItemRecord[], hasMore: boolean) {
  const data = items.map(messageItem);
  return { object: "list" as const, data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: hasMore };
}

// The Responses API's stream events, built in one place for a live turn (response-sse.ts) and for
// the replay of a stored response (GET /v1/responses/{id}?stream=true): typed events numbered by
// sequence_number, in OpenAI's order (response.created … response.completed / response.incomplete;
// a failure after the start: error, then response.failed).
import type { ResponseRecord } from "../chain/types";
import type { Usage } from "../upstream/types";
import { failed, finished, inProgress, outputMessage, type ResponseTemplate } from "./response-object";
import type { ResponseBody } from "./responses-schemas";

/** One event: its `type` (also the SSE `event:` name), its `sequence_number`, and its fields. */
export interface ResponseEvent {
  type: string;
  sequence_number: number;
  [field: string]: unknown;
}

/** The events of one response, numbered in the order they are asked for. */
export class ResponseEvents {
  private seq = 0;
  private text = "";

  constructor(private readonly id: string, private readonly template: ResponseTemplate, private readonly outputId: string) {}

  private next(type: string, fields: Record<string, unknown>): ResponseEvent {
    return { type, sequence_number: this.seq++, ...fields };
  }

  private get at() {
    return { item_id: this.outputId, output_index: 0, content_index: 0 };
  }

  start(): ResponseEvent[] {
    return [
      this.next("response.created", { response: inProgress(this.id, this.template) }),
      this.next("response.in_progress", { response: inProgress(this.id, this.template) }),
      this.next("response.output_item.added", { output_index: 0, item: outputMessage(this.outputId, "", "in_progress") }),
      this.next("response.content_part.added", { ...this.at, part: { type: "output_text", text: "", annotations: [], logprobs: [] } }),
    ];
  }

  delta(delta: string): ResponseEvent {
    this.text += delta;
    return this.next("response.output_text.delta", { ...this.at, delta, logprobs: [] });
  }

  /** The text's end and the final response (completed, or incomplete when cut at max_output_tokens). */
  done(finish: "stop" | "length", usage: Usage): { events: ResponseEvent[]; status: ResponseBody["status"] } {
    const body = finished(this.id, this.template, this.outputId, this.text, finish, usage);
    const events = [
      this.next("response.output_text.done", { ...this.at, text: this.text, logprobs: [] }),
      this.next("response.content_part.done", { ...this.at, part: body.output[0]!.content[0] }),
      this.next("response.output_item.done", { output_index: 0, item: body.output[0] }),
      this.next(body.status === "completed" ? "response.completed" : "response.incomplete", { response: body }),
    ];
    return { events, status: body.status };
  }

  fail(err: { message: string; param: string | null }, code: string): ResponseEvent[] {
    return [
      this.next("error", { code, message: err.message, param: err.param }),
      this.next("response.failed", { response: failed(this.id, this.template, code, err.message) }),
    ];
  }
}

/**
 * Every event a live stream sent for this stored response, as it would have sent them with its
 * whole text in one delta (none for an empty text, as a live stream sends no empty delta). Only
 * finished turns are stored, so the replay ends in response.completed or response.incomplete.
 */
export function storedResponseEvents(r: ResponseRecord): ResponseEvent[] {
  const events = new ResponseEvents(r.id, r.template as ResponseTemplate, r.output_item_id);
  return [
    ...events.start(),
    ...(r.output_text !== "" ? [events.delta(r.output_text)] : []),
    ...events.done(r.finish_reason, r.usage).events,
  ];
}

// Non-streaming responses: drain a turn into its full text. Nothing has been sent yet, so an
// in-band error becomes a normal HTTP error.
import { ApiError } from "../errors";
import type { Turn } from "../turn";
import { eventError } from "../upstream/errors";
import type { DoneEvent } from "../upstream/types";

export async function collect(turn: Turn): Promise<{ text: string; done: DoneEvent }> {
  let text = "";
  try {
    for await (const ev of turn.events) {
      if (ev.type === "delta") text += ev.text;
      else if (ev.type === "done") return { text, done: ev };
      else throw eventError(ev);
    }
  } catch (err) {
    turn.cancel();
    throw err;
  }
  throw new ApiError(502, "The model service ended the response early.", { code: "upstream_protocol_error", type: "server_error" });
}

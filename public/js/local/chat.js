// Chat rendering and streaming detokenization for the in-browser engine, mirroring the GPU service
// (gpu-service/lckv_service/tokenizer.py): the model folder's Jinja chat template rendered
// concatenatively (each turn renders only its new messages after the cached tokens), ids from
// tokenizer.json with no special tokens added, and text released only in whole characters.
import { Template } from "../../generated/vendor/jinja.mjs";

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

export class ChatFormat {
  /**
   * Tokenizer: @huggingface/tokenizers' class; tokenizerJson / tokenizerConfig: the model folder's files;
   * chat: the manifest's {stop_token_ids, end_of_turn_ids}, computed by the service's Python code.
   */
  constructor(Tokenizer, tokenizerJson, tokenizerConfig, chat) {
    this.tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
    // Message text is data: this copy, without the special tokens, reads their text as plain text,
    // so a message saying "<|end|>" cannot close its turn (the service's encode_chat does the same).
    const added = tokenizerJson.added_tokens ?? [];
    const special = added.filter((t) => t.special);
    this.plain = new Tokenizer({ ...tokenizerJson, added_tokens: added.filter((t) => !t.special) }, tokenizerConfig);
    this.specialIds = new Map(special.map((t) => [t.content, t.id]));
    this.specialRe = special.length
      ? new RegExp([...this.specialIds.keys()].sort((a, b) => b.length - a.length).map(escapeRe).join("|"), "g") : null;
    const tpl = tokenizerConfig.chat_template;
    if (typeof tpl !== "string" || !tpl) throw new Error("tokenizer_config.json has no chat_template");
    this.template = new Template(tpl);
    this.eosToken = typeof tokenizerConfig.eos_token === "string" ? tokenizerConfig.eos_token : tokenizerConfig.eos_token?.content;
    this.stopIds = new Set(chat.stop_token_ids);
    // what the template writes after a reply (e.g. "<|end|>\n"): fed after every reply so the next
    // turn continues after a closed turn
    this.endOfTurn = chat.end_of_turn_ids;
  }

  render(messages, addGenerationPrompt) {
    return this.template.render({ messages, add_generation_prompt: addGenerationPrompt, eos_token: this.eosToken });
  }

  encode(text) {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  /** Prompt ids for the new messages of a turn, ending with the generation prompt. */
  encodeTurn(messages) {
    return this.encodeChat(messages, true);
  }

  /**
   * The rendered chat with special tokens only where the template wrote them: rendered with a
   * placeholder per message, split at the template's special tokens, the messages put back into
   * the text between them, which is encoded with special-token strings read as text.
   */
  encodeChat(messages, addGenerationPrompt) {
    const rendered = this.render(messages, addGenerationPrompt);
    if (!this.specialRe) return this.encode(rendered);
    const nonce = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
    const marks = new Map(messages.map((m, i) => [`\ue000${nonce}.${i}\ue001`, m.content ?? ""]));
    const withMarks = this.render(messages.map((m, i) => ({ ...m, content: `\ue000${nonce}.${i}\ue001` })), addGenerationPrompt);
    const markRe = new RegExp([...marks.keys()].map(escapeRe).join("|"), "g");
    const putBack = (text) => text.replace(markRe, (mark) => marks.get(mark));
    if (putBack(withMarks) !== rendered) {
      // a template that rewrites message text cannot be split this way: refuse control-token text
      messages.forEach((m, i) => {
        const hit = (m.content ?? "").match(this.specialRe);
        if (hit) throw new Error(`message ${i + 1} holds the control token ${hit[0]}, which this model's chat template cannot keep as text`);
      });
      return this.encode(rendered);
    }
    const ids = [];
    let pos = 0;
    for (const hit of withMarks.matchAll(this.specialRe)) {
      ids.push(...this.encodePlain(putBack(withMarks.slice(pos, hit.index))), this.specialIds.get(hit[0]));
      pos = hit.index + hit[0].length;
    }
    ids.push(...this.encodePlain(putBack(withMarks.slice(pos))));
    return ids;
  }

  encodePlain(text) {
    return text ? this.plain.encode(text, { add_special_tokens: false }).ids : [];
  }

  decode(ids) {
    if (ids.length === 0) return "";
    return this.tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }
}

/** Generated ids → sendable text: a token that ends mid-character is held until the character completes. */
export class TextStream {
  constructor(format) {
    this.format = format;
    this.ids = [];
    this.emitted = "";
  }

  push(id) {
    this.ids.push(id);
    const text = this.format.decode(this.ids);
    const whole = text.endsWith("\uFFFD") ? text.replace(/\uFFFD+$/, "") : text;
    if (!whole.startsWith(this.emitted) || whole.length <= this.emitted.length) return "";
    const out = whole.slice(this.emitted.length);
    this.emitted = whole;
    return out;
  }
}

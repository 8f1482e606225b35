// Chat rendering and streaming detokenization for the in-browser engine, mirroring the GPU service
// (gpu-service/lckv_service/tokenizer.py): the model folder's Jinja chat template rendered
// concatenatively (each turn renders only its new messages after the cached tokens), ids from
// tokenizer.json with no special tokens added, and text released only in whole characters.
import { Template } from "../../generated/vendor/jinja.mjs";

export class ChatFormat {
  /** chat: the manifest's {stop_token_ids, end_of_turn_ids}, computed by the service's Python code. */
  constructor(tokenizer, tokenizerConfig, chat) {
    this.tokenizer = tokenizer;
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
    return this.encode(this.render(messages, true));
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

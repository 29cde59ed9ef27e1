/**
 * Tokenizer: Hugging Face `tokenizer.json` + `tokenizer_config.json` through @huggingface/tokenizers
 * (pure JS, so it runs in a worker without another wasm), plus an incremental detokenizer for
 * streaming.
 */
import { Tokenizer } from "@huggingface/tokenizers";

function tokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return null;
}

export class TextTokenizer {
  private readonly tok: Tokenizer;
  /** Special-token strings for chat templates ("<s>", "<|im_end|>", ...), null when unknown. */
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly config: Record<string, unknown>;

  constructor(tokenizerJson: object, tokenizerConfig: object, ids: { bos: number | null; eos: number[] }) {
    this.tok = new Tokenizer(tokenizerJson, tokenizerConfig);
    this.config = tokenizerConfig as Record<string, unknown>;
    this.bosToken = tokenText(this.config["bos_token"]) ?? (ids.bos !== null ? this.idToToken(ids.bos) : null);
    const eos0 = ids.eos[0];
    this.eosToken = tokenText(this.config["eos_token"]) ?? (eos0 !== undefined ? this.idToToken(eos0) : null);
  }

  /**
   * Token ids of `text`, without the tokenizer's own special tokens: whether a BOS goes first is
   * the chat config's decision (add_bos_token), and a chat template writes its own markers.
   */
  encode(text: string): number[] {
    if (text === "") return [];
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: readonly number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return "";
    return this.tok.decode(ids as number[], { skip_special_tokens: skipSpecialTokens });
  }

  idToToken(id: number): string | null {
    return this.tok.id_to_token(id) ?? null;
  }

  /** Text of one token on its own, as logprobs report it. */
  tokenString(id: number): string {
    return this.decode([id], false);
  }
}

/**
 * Turns a stream of token ids into text deltas.
 *
 * Decoding one token at a time is wrong for byte-fallback and multi-byte characters (a CJK
 * character or emoji may span several tokens) and for tokenizers that drop a leading space on
 * the first token they decode. So each step decodes a short window twice, with and without the
 * newest tokens, and emits the difference; a window ending in U+FFFD (an incomplete UTF-8
 * sequence) emits nothing until the rest arrives.
 */
export class StreamingDetokenizer {
  private readonly tok: TextTokenizer;
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;

  constructor(tok: TextTokenizer) {
    this.tok = tok;
  }

  /** Add one token; returns the newly completed text (possibly ""). */
  push(id: number): string {
    this.ids.push(id);
    const prefix = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.tok.decode(this.ids.slice(this.prefixOffset));
    if (full.length > prefix.length && !full.endsWith("\uFFFD")) {
      const delta = full.slice(prefix.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return delta;
    }
    return "";
  }

  /** Text held back at the end of generation (e.g. a dangling partial character). */
  flush(): string {
    const prefix = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.tok.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset = this.ids.length;
    return full.length > prefix.length ? full.slice(prefix.length) : "";
  }
}

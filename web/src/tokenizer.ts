/**
 * Tokenizer: Hugging Face `tokenizer.json` + `tokenizer_config.json` through @huggingface/tokenizers
 * (pure JS, so it runs in a worker without another wasm), plus an incremental detokenizer for
 * streaming.
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { SPEC } from "./request_spec.js";

/**
 * Inverse of the byte-level BPE alphabet (GPT-2's): each byte is drawn as one printable
 * character, bytes that are printable as themselves and the rest as code points from 256 up.
 */
function byteLevelDecoder(): Map<string, number> {
  const table = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table.set(String.fromCharCode(printable ? b : 256 + extra++), b);
  }
  return table;
}

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
  /** Byte-level BPE (tokens spell bytes) rather than SentencePiece pieces. */
  private readonly byteDecoder: Map<string, number> | null;
  private readonly bytesCache = new Map<number, Uint8Array>();

  constructor(tokenizerJson: object, tokenizerConfig: object, ids: { bos: number | null; eos: number[] }) {
    this.tok = new Tokenizer(tokenizerJson, tokenizerConfig);
    const decoder = (tokenizerJson as { decoder?: unknown }).decoder;
    this.byteDecoder = JSON.stringify(decoder ?? null).includes("ByteLevel") ? byteLevelDecoder() : null;
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

  /**
   * The exact bytes one token stands for (a partial UTF-8 character is possible), as the native
   * engine's TextTokenizer.token_bytes computes them: what logprobs report per token.
   */
  tokenBytes(id: number): Uint8Array {
    const cached = this.bytesCache.get(id);
    if (cached) return cached;
    const piece = this.idToToken(id) ?? "";
    let raw: Uint8Array;
    const chars = [...piece];
    if (this.byteDecoder && chars.every((c) => this.byteDecoder!.has(c))) {
      raw = Uint8Array.from(chars, (c) => this.byteDecoder!.get(c)!);
    } else if (!this.byteDecoder && /^<0x[0-9A-Fa-f]{2}>$/.test(piece)) {
      raw = Uint8Array.of(parseInt(piece.slice(3, 5), 16)); // SentencePiece byte fallback
    } else {
      // An added token written in plain text, or a SentencePiece piece (word marker = space).
      raw = new TextEncoder().encode(this.byteDecoder ? piece : piece.replaceAll("\u2581", " "));
    }
    this.bytesCache.set(id, raw);
    return raw;
  }

  /** Text of one token on its own, as logprobs report it (an incomplete character as U+FFFD). */
  tokenString(id: number): string {
    return new TextDecoder().decode(this.tokenBytes(id));
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
export class IncrementalDetokenizer {
  private readonly tok: TextTokenizer;
  private readonly ids: number[];
  private prefixOffset = 0;
  private readOffset: number;

  /**
   * The window starts with the prompt's last tokens (request_spec.json detokenizer.prefix_tokens),
   * already read, so the first generated token decodes with its leading space (SentencePiece
   * decoders strip the space at the start of what they decode), as in the native engine.
   */
  constructor(tok: TextTokenizer, promptIds: readonly number[] = []) {
    this.tok = tok;
    const n = SPEC.detokenizer.prefix_tokens;
    this.ids = promptIds.slice(Math.max(0, promptIds.length - n));
    this.readOffset = this.ids.length;
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

/**
 * Text of one choice as it streams: the incremental detokenizer and the stop-string matcher,
 * request_spec.json's stop rules. Twin of compiler/text_stream.py.
 */
import { IncrementalDetokenizer, type TextTokenizer } from "./tokenizer.js";

/**
 * Finds stop strings in streamed text. Text that could be the start of a stop string is held
 * back until it is known not to be one, so a stop string never leaks to the caller in pieces.
 */
export class StopStringMatcher {
  private readonly stops: readonly string[];
  private pending = "";

  constructor(stops: readonly string[]) {
    this.stops = stops;
  }

  /** Feed new text; returns text safe to emit and whether a stop string was hit. */
  feed(text: string): { emit: string; stopped: boolean } {
    if (this.stops.length === 0) return { emit: text, stopped: false };
    const buf = this.pending + text;
    let cut = -1;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.pending = "";
      return { emit: buf.slice(0, cut), stopped: true };
    }
    // Hold back the longest suffix that is a proper prefix of some stop string.
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, buf.length); k > hold; k--) {
        if (buf.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    this.pending = buf.slice(buf.length - hold);
    return { emit: buf.slice(0, buf.length - hold), stopped: false };
  }

  /** End of generation: whatever was held back was not a stop string. */
  flush(): string {
    const p = this.pending;
    this.pending = "";
    return p;
  }
}

/** The detokenizer and stop matcher of one choice: request_spec.json's stop rules. */
export class TextStream {
  private readonly detok: IncrementalDetokenizer;
  private readonly stopper: StopStringMatcher;

  constructor(tokenizer: TextTokenizer, promptIds: readonly number[], stops: readonly string[]) {
    this.detok = new IncrementalDetokenizer(tokenizer, promptIds);
    this.stopper = new StopStringMatcher(stops);
  }

  /** Add one token: the text now safe to emit, and whether it hit a stop string. */
  push(id: number): { text: string; stopped: boolean } {
    const r = this.stopper.feed(this.detok.push(id));
    return { text: r.emit, stopped: r.stopped };
  }

  /** The choice ends: release the held-back text, cut at a stop string it completes. */
  finish(): { text: string; stopped: boolean } {
    const r = this.stopper.feed(this.detok.flush());
    return r.stopped ? { text: r.emit, stopped: true } : { text: r.emit + this.stopper.flush(), stopped: false };
  }
}

/**
 * Typed errors. Every error the engine raises on purpose is an AAEError subclass, so a page can
 * branch on `instanceof` (or on `.name` when the error crossed a worker boundary and was rebuilt,
 * see `serializeError` / `deserializeError`).
 */

/** Base class: `name` is the subclass name, `details` carries machine-readable context. */
export class AAEError extends Error {
  // Names are spelled out, not taken from the constructor: minifiers rename classes.
  override name = "AAEError";
  readonly details: Record<string, unknown>;

  constructor(message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.details = details;
  }
}

/** `navigator.gpu` is missing, or no adapter could be obtained. */
export class WebGPUNotAvailableError extends AAEError {
  override name = "WebGPUNotAvailableError";
}

/** The model needs a WebGPU feature (e.g. "shader-f16") that this adapter lacks. */
export class FeatureNotSupportedError extends AAEError {
  override name = "FeatureNotSupportedError";
  get feature(): string {
    return String(this.details["feature"] ?? "");
  }
}

/** Browser storage is full: the model's shards cannot be cached. */
export class QuotaExceededError extends AAEError {
  override name = "QuotaExceededError";
}

/** A fetch kept failing after every retry (or failed in a way retrying cannot fix). */
export class NetworkError extends AAEError {
  override name = "NetworkError";
  get url(): string {
    return String(this.details["url"] ?? "");
  }
}

/** The GPU device was lost (driver reset, tab backgrounded too long, out of memory...). */
export class DeviceLostError extends AAEError {
  override name = "DeviceLostError";
}

/** The prompt does not fit in the model's context window. Raised before any GPU work. */
export class ContextWindowExceededError extends AAEError {
  override name = "ContextWindowExceededError";
  get promptTokens(): number {
    return Number(this.details["prompt_tokens"] ?? 0);
  }
  get contextWindowSize(): number {
    return Number(this.details["context_window_size"] ?? 0);
  }
}

/** The model id is not in appConfig.model_list, or its folder is not where model_url says. */
export class ModelNotFoundError extends AAEError {
  override name = "ModelNotFoundError";
}

/** A request field is wrong. `field` names it with a JSON-path-like string ("messages[2].role"). */
export class InvalidRequestError extends AAEError {
  override name = "InvalidRequestError";
  get field(): string {
    return String(this.details["field"] ?? "");
  }
}

/** A model folder is malformed or was written by an incompatible compiler (format_version). */
export class ArtifactFormatError extends AAEError {
  override name = "ArtifactFormatError";
}

/** An API was called before a model was loaded (or after unload()). */
export class EngineNotLoadedError extends AAEError {
  override name = "EngineNotLoadedError";
}

/**
 * The model does not fit this device, found before any weight is fetched: `limit` names the
 * adapter limit, `needBytes` what the model asks of it, `limitBytes` what the adapter allows,
 * `suggestion` a variant that would fit.
 */
export class ModelTooLargeError extends AAEError {
  override name = "ModelTooLargeError";
  get limit(): string {
    return String(this.details["limit"] ?? "");
  }
  get needBytes(): number {
    return Number(this.details["needBytes"] ?? 0);
  }
  get limitBytes(): number {
    return Number(this.details["limitBytes"] ?? 0);
  }
  get suggestion(): string {
    return String(this.details["suggestion"] ?? "");
  }
}

const ERROR_CLASSES: Record<string, new (message: string, details?: Record<string, unknown>) => AAEError> = {
  AAEError,
  WebGPUNotAvailableError,
  FeatureNotSupportedError,
  QuotaExceededError,
  NetworkError,
  DeviceLostError,
  ContextWindowExceededError,
  ModelNotFoundError,
  InvalidRequestError,
  ArtifactFormatError,
  EngineNotLoadedError,
  ModelTooLargeError,
};

/** Plain-object form of an error, safe for postMessage (structured clone drops Error subclasses). */
export interface SerializedError {
  name: string;
  message: string;
  details: Record<string, unknown>;
  stack?: string | undefined;
}

export function serializeError(err: unknown): SerializedError {
  if (err instanceof AAEError) {
    return { name: err.name, message: err.message, details: toCloneable(err.details), stack: err.stack };
  }
  if (err instanceof Error) {
    return { name: err.name, message: err.message, details: {}, stack: err.stack };
  }
  return { name: "Error", message: String(err), details: {} };
}

/** Rebuild the typed error on the receiving side of a worker so `instanceof` keeps working. */
export function deserializeError(s: SerializedError): Error {
  const cls = ERROR_CLASSES[s.name];
  const err = cls ? new cls(s.message, s.details) : new Error(s.message);
  if (!cls) err.name = s.name;
  if (s.stack) err.stack = s.stack;
  return err;
}

function toCloneable(details: Record<string, unknown>): Record<string, unknown> {
  // details are meant to be JSON-ish; drop anything structured clone would choke on.
  try {
    return JSON.parse(JSON.stringify(details)) as Record<string, unknown>;
  } catch {
    return {};
  }
}

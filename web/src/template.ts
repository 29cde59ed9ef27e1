/**
 * Chat templates: the model's own jinja `chat_template` (from aae-chat-config.json, or the
 * engine's chatTemplate option), rendered with @huggingface/jinja using transformers' variables
 * (messages, tools, bos_token, eos_token, add_generation_prompt), so a prompt here is
 * byte-identical to `apply_chat_template` in Python. Twin of compiler/template.py.
 */
import { Template } from "@huggingface/jinja";
import { ArtifactFormatError, InvalidRequestError } from "./errors.js";
import { callFormat, type CallFormat, type TemplateTool, type TemplateToolCall } from "./tools.js";

export interface TemplateMessage {
  role: string;
  content: string;
  name?: string;
  tool_calls?: TemplateToolCall[];
  tool_call_id?: string;
}

export class ChatTemplate {
  private readonly template: Template | null;
  private readonly vars: Record<string, unknown>;
  /** The tool-call format the template renders; null when it cannot take tools (tools.ts callFormat). */
  readonly callFormat: CallFormat | null;
  /** Why it cannot take tools ("" when it can). */
  readonly noToolsReason: string;

  /**
   * @param source jinja source, or null for base models (no chat format)
   * @param specialTokens bos_token / eos_token / ... strings the template may reference
   */
  constructor(source: string | null, specialTokens: Record<string, string | null>) {
    try {
      this.template = source === null ? null : new Template(source);
    } catch (e) {
      throw new ArtifactFormatError(`The model's chat_template does not parse: ${(e as Error).message}`, {}, { cause: e });
    }
    [this.callFormat, this.noToolsReason] = callFormat(source);
    this.vars = {};
    for (const [k, v] of Object.entries(specialTokens)) if (v !== null) this.vars[k] = v;
  }

  get hasTemplate(): boolean {
    return this.template !== null;
  }

  /**
   * The prompt text for `messages`, ending with the assistant's turn opener.
   * A base model has no chat format: its prompt is the messages' text joined by newlines, which
   * for the usual single message is exactly the text the caller wrote.
   * `tools` (OpenAI's tool objects) are the template's `tools` variable.
   */
  render(messages: readonly TemplateMessage[], addGenerationPrompt = true, tools: readonly TemplateTool[] | null = null): string {
    if (this.template === null) return messages.map((m) => m.content).join("\n");
    try {
      return this.template.render({
        ...this.vars,
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: addGenerationPrompt,
        // null, not absent, as Python passes None: `tools is not none` is false either way.
        tools,
        documents: null,
      });
    } catch (e) {
      // raise_exception() in a template is how templates reject a conversation (Gemma: no
      // system role); that is the caller's error, as in the Python engine.
      throw new InvalidRequestError(`The model's chat template rejected the messages: ${(e as Error).message}`, {
        field: "messages",
        param: "messages",
      });
    }
  }
}

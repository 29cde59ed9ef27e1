"""Structured output: `response_format` (json_object, json_schema, grammar) checked and turned
into a per-choice token mask with XGrammar. Twin of web/src/structured.ts; the rules are
request_spec.json "structured_output" (REQUESTS.md, "Structured output").

XGrammar (a maintained grammar engine with a PyPI and an npm build of the same C++) compiles a
JSON Schema or an EBNF grammar against the model's vocabulary once, then gives for each step the
set of tokens that keep the output inside the grammar. It is imported only when a request asks for
structured output: it imports PyTorch, which the runtime otherwise keeps out of its process.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .request_spec import SPEC, show, type_name
from .tools import CallFormat, ToolPlan, structural_tag

RULES: Mapping[str, Any] = SPEC["structured_output"]
SCHEMA_PARAM = "response_format.json_schema.schema"


@dataclass(frozen=True)
class ResponseFormat:
    """A checked response_format: `kind` is text, json_object, json_schema or grammar; or the
    grammar of a request's tool calls (kind tool_calls, made by the engine, not a request field)."""

    kind: str
    schema: Any = None  # json_schema (json_object: the spec's json_object_schema)
    grammar: str | None = None  # grammar: XGrammar's EBNF
    name: str | None = None
    tools: ToolPlan | None = None  # tool_calls: the functions and the choice
    call_format: CallFormat | None = None  # tool_calls: the template's call format

    @property
    def constrained(self) -> bool:
        return self.kind != "text"

    def structural_tag(self, schema_grammar: Any) -> dict[str, Any]:
        assert self.tools is not None and self.call_format is not None
        return structural_tag(self.tools, self.call_format, schema_grammar)

    def key(self) -> str:
        """What identifies the compiled grammar (the compile cache's key)."""
        if self.kind == "grammar":
            return "grammar:" + (self.grammar or "")
        if self.kind == "tool_calls":
            return "tools:" + json.dumps(self.structural_tag(lambda schema: json.dumps(schema, sort_keys=True)), sort_keys=True)
        return "schema:" + json.dumps(self.schema, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Checking the request field


def _xgrammar() -> Any:
    """The xgrammar module. It imports PyTorch, which `chat`, `serve` and bench's worker keep
    out of their process until something needs it (compiler.keep_torch_out): this is such a
    thing, so the ~250 MB are paid by the processes that serve structured output only."""
    from . import import_torch

    import_torch()
    try:
        import xgrammar
    except ImportError as exc:
        version = RULES["engine_version"]
        raise RuntimeError(
            f"structured output (response_format) needs XGrammar {version}: pip install --no-deps xgrammar=={version} "
            f"pydantic (make setup installs it; its wheel's other requirements are GPU-only)") from exc
    return xgrammar


def _spec_error(name: str, param: str, **values: Any) -> Exception:
    from .protocol import spec_error  # protocol imports this module

    return spec_error(name, param, **values)


def check_response_format(value: Any) -> ResponseFormat:
    """The response_format field, checked: its type, its fields, and a schema's keywords."""
    if not isinstance(value, Mapping):
        raise _spec_error("bad_type", "response_format", expected=SPEC["expected"]["object"], got=type_name(value))
    kind = value.get("type")
    allowed = RULES["response_format_fields"]
    if kind not in allowed:
        raise _spec_error("response_format", "response_format.type", value=show(kind))
    extra = sorted(str(k) for k in value if k not in allowed[kind])
    if extra:
        raise _spec_error("response_format_fields", f"response_format.{extra[0]}", names=", ".join(extra))
    if kind == "text":
        return ResponseFormat("text")
    if kind == "json_object":
        return ResponseFormat("json_object", schema=RULES["json_object_schema"])
    if kind == "grammar":
        grammar = value.get("grammar")
        if not isinstance(grammar, str):
            raise _spec_error("bad_type", "response_format.grammar", expected=SPEC["expected"]["string"], got=type_name(grammar))
        if not grammar.strip():
            raise _spec_error("grammar_invalid", "response_format.grammar", detail="the grammar is empty.")
        return ResponseFormat("grammar", grammar=grammar)
    return _json_schema(value.get("json_schema"))


def _json_schema(spec: Any) -> ResponseFormat:
    param = "response_format.json_schema"
    if not isinstance(spec, Mapping):
        raise _spec_error("bad_type", param, expected=SPEC["expected"]["object"], got=type_name(spec))
    extra = sorted(str(k) for k in spec if k not in RULES["json_schema_fields"])
    if extra:
        raise _spec_error("response_format_fields", f"{param}.{extra[0]}", names=", ".join(extra))
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(RULES["name_pattern"], name):
        raise _spec_error("json_schema_name", f"{param}.name", value=show(name))
    for field, kind in (("description", "string"), ("strict", "boolean")):
        if spec.get(field) is not None and type_name(spec[field]) != kind:
            raise _spec_error("bad_type", f"{param}.{field}", expected=SPEC["expected"][kind], got=type_name(spec[field]))
    schema = spec.get("schema", {})
    check_schema(schema, SCHEMA_PARAM)
    return ResponseFormat("json_schema", schema=schema, name=name)


def check_schema(schema: Any, path: str) -> None:
    """Every keyword of `schema` and its subschemas is one the spec supports, with a value of its
    kind. The error names the JSON path of what is wrong."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        raise _spec_error("schema_not_object", path, got=type_name(schema))
    keywords = RULES["schema_keywords"]
    for key, value in schema.items():
        at = f"{path}.{key}"
        if key in RULES["annotation_keywords"]:
            continue
        kind = keywords.get(key)
        if kind is None:
            raise _spec_error("schema_keyword", at, keyword=key)
        if key in RULES["integer_only_keywords"] and schema.get("type") != "integer":
            raise _spec_error("schema_integer_only", at, keyword=key)
        _check_value(kind, key, value, at)


def _check_value(kind: str, keyword: str, value: Any, at: str) -> None:
    def bad() -> Exception:
        return _spec_error("schema_value", at, expected=RULES["value_kinds"][kind], keyword=keyword, value=show(value))

    if kind == "schema":
        if not isinstance(value, (Mapping, bool)):
            raise bad()
        check_schema(value, at)
    elif kind == "schema_map":
        if not isinstance(value, Mapping):
            raise bad()
        for name, sub in value.items():
            check_schema(sub, f"{at}.{name}")
    elif kind == "schema_array":
        if not isinstance(value, list) or not value:
            raise bad()
        for i, sub in enumerate(value):
            check_schema(sub, f"{at}[{i}]")
    elif kind == "type":
        names = value if isinstance(value, list) else [value]
        if not names or not all(isinstance(n, str) for n in names):
            raise bad()
        for n in names:
            if n not in RULES["types"]:
                raise _spec_error("schema_type", at, value=show(n), types=", ".join(RULES["types"]))
    elif kind == "string_array":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad()
    elif kind == "array":
        if not isinstance(value, list) or not value:
            raise bad()
    elif kind == "count":
        if type_name(value) != "integer" or value < 0:
            raise bad()
    elif kind == "number":
        if type_name(value) not in ("number", "integer") or not math.isfinite(value):
            raise bad()
    elif kind == "string":
        if not isinstance(value, str):
            raise bad()


# --------------------------------------------------------------------------------------------
# The vocabulary XGrammar needs, from the model's tokenizer.json


def vocabulary(tokenizer_json: Mapping[str, Any], vocab_size: int) -> tuple[list[str], str, bool]:
    """(encoded vocab by id padded to vocab_size, vocab type, prepend space), by the spec's rule."""
    model = tokenizer_json.get("model") or {}
    table = model.get("vocab") or {}
    tokens = [""] * vocab_size
    pairs = enumerate(p[0] for p in table) if isinstance(table, list) else ((i, t) for t, i in table.items())
    for i, text in pairs:
        if 0 <= i < vocab_size:
            tokens[i] = text
    for added in tokenizer_json.get("added_tokens") or []:
        if 0 <= added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
    return tokens, _vocab_type(tokenizer_json.get("decoder")), _prepends_space(tokenizer_json)


def _components(node: Any) -> list[Mapping[str, Any]]:
    """A tokenizer.json component and, for a Sequence, its members (flattened)."""
    if not isinstance(node, Mapping):
        return []
    parts = [node]
    for key in ("decoders", "pretokenizers", "normalizers"):
        for sub in node.get(key) or []:
            parts.extend(_components(sub))
    return parts


def _vocab_type(decoder: Any) -> str:
    types = {c.get("type") for c in _components(decoder)}
    for name, vocab_type in RULES["vocab_types"].items():
        if name in types:
            return vocab_type
    return "raw"


def _prepends_space(tokenizer_json: Mapping[str, Any]) -> bool:
    for c in _components(tokenizer_json.get("pre_tokenizer")):
        if c.get("type") == "Metaspace" and (c.get("prepend_scheme", "always") != "never" if "prepend_scheme" in c else c.get("add_prefix_space", True)):
            return True
    return any(c.get("type") == "Prepend" and c.get("prepend") == "\u2581" for c in _components(tokenizer_json.get("normalizer")))


# --------------------------------------------------------------------------------------------
# Grammars and per-choice matchers


class GrammarCompiler:
    """One model's compiled grammars: XGrammar's compiler over its vocabulary, with a cache
    (a schema used by many requests is compiled once)."""

    def __init__(self, model_dir: Path, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        self._tokenizer_json = Path(model_dir) / "tokenizer.json"
        self._vocab_size = vocab_size
        self._stop = list(stop_token_ids)
        self._compiler: Any = None
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _xgr_compiler(self) -> Any:
        if self._compiler is None:
            xgr = _xgrammar()

            # Read on the first structured request, not at engine load (SmolLM2's is 2 MB).
            tokenizer_json = json.loads(self._tokenizer_json.read_text(encoding="utf-8"))
            tokens, vocab_type, prepend = vocabulary(tokenizer_json, self._vocab_size)
            info = xgr.TokenizerInfo(tokens, xgr.VocabType[vocab_type.upper()], vocab_size=self._vocab_size,
                                     stop_token_ids=self._stop, add_prefix_space=prepend)
            self._compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        return self._compiler

    def compile(self, fmt: ResponseFormat) -> Any:
        """The compiled grammar of a constrained format; a bad schema or grammar is a RequestError."""
        key = fmt.key()
        with self._lock:
            if key not in self._cache:
                compiler = self._xgr_compiler()
                try:
                    if fmt.kind == "grammar":
                        self._cache[key] = compiler.compile_grammar(fmt.grammar)
                    elif fmt.kind == "tool_calls":
                        grammars = self._parameter_grammars(fmt)
                        tag = fmt.structural_tag(lambda schema: grammars[id(schema)])
                        self._cache[key] = compiler.compile_structural_tag(json.dumps(tag, ensure_ascii=False))
                    else:
                        self._cache[key] = compiler.compile_json_schema(
                            json.dumps(fmt.schema), any_whitespace=RULES["any_whitespace"], indent=RULES["indent"],
                            separators=tuple(RULES["separators"]), strict_mode=RULES["strict_mode"])
                except RuntimeError as exc:
                    detail = _xgrammar_detail(exc)
                    if fmt.kind == "grammar":
                        raise _spec_error("grammar_invalid", "response_format.grammar", detail=detail) from None
                    raise _spec_error("schema_compile", "tools" if fmt.kind == "tool_calls" else SCHEMA_PARAM, detail=detail) from None
            return self._cache[key]

    def _parameter_grammars(self, fmt: ResponseFormat) -> dict[int, str]:
        """Each function's parameters as EBNF, by the schema object's id; an error names the function."""
        assert fmt.tools is not None
        out = {}
        for i, function in enumerate(fmt.tools.functions):
            try:
                out[id(function.parameters)] = self._schema_grammar(function.parameters)
            except RuntimeError as exc:
                raise _spec_error("schema_compile", f"tools[{i}].function.parameters", detail=_xgrammar_detail(exc)) from None
        return out

    @staticmethod
    def _schema_grammar(schema: Any) -> str:
        """A JSON Schema as XGrammar's EBNF text, with the spec's JSON options."""
        grammar = _xgrammar().Grammar.from_json_schema(
            json.dumps(schema), any_whitespace=RULES["any_whitespace"], indent=RULES["indent"],
            separators=tuple(RULES["separators"]), strict_mode=RULES["strict_mode"])
        return str(grammar)

    def matcher(self, compiled: Any) -> "GrammarMatcher":
        return GrammarMatcher(compiled, self._vocab_size)


def _xgrammar_detail(exc: BaseException) -> str:
    """XGrammar's message without its log prefix ("[time] file.cc:line: ")."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", line)


class GrammarMatcher:
    """One choice's position in its grammar: the allowed tokens next, and accepting a token."""

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        xgr = _xgrammar()

        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._vocab_size = vocab_size
        self._bits = np.arange(32, dtype=np.uint32)

    def allowed(self) -> np.ndarray:
        """bool[vocab_size]: the tokens the grammar allows next (only EOS once it is complete)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        words = self._bitmask.numpy()[0].view(np.uint32)
        return (((words[:, None] >> self._bits) & 1).astype(bool)).reshape(-1)[: self._vocab_size]

    def accept(self, token_id: int) -> None:
        if not self._matcher.accept_token(token_id):
            raise RuntimeError(f"the grammar refused token {token_id}, which its own mask allowed")

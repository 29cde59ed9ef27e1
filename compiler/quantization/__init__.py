"""Quantization schemes: a name -> (model dtype, how weights are stored).

Names follow MLC's pattern `q{weight bits}f{activation bits}_{variant}`:

| scheme | weights | activations | notes |
| --- | --- | --- | --- |
| q0f32, q0f16 | unquantized | f32 / f16 | |
| q4f32_1, q4f16_1 | int4, groups of 32, scale + minimum | f32 / f16 | the default; lossless for GGUF Q4_1 sources |
| q4f32_0, q4f16_0 | int4, groups of 32, scale only (symmetric) | f32 / f16 | MLC's q4f16_1 numerics; 0.5-1 bit/weight smaller |
| q8f32_1, q8f16_1 | int8, groups of 32, scale + minimum | f32 / f16 | |
| q4f16_2 | int4, groups of 128, scale + minimum | f16 | smaller, less exact |
| q4f32_1a8 | int4, groups of 32, f16 scale + minimum | f32; matmul inputs int8 per group of 32 | CPU only: VNNI dot products (int8_activations.py); the fastest CPU decode |

Unlike MLC, our `_1` variant is asymmetric: on SmolLM2-135M (from its Q4_1 GGUF) symmetric int4
gives a final hidden-state cosine of 0.84 and wrong answers; asymmetric gives 0.999.

A scheme is a small record; adding one (int8, group size 128, ...) is one line in SCHEMES as long
as its storage is a GroupQuantSpec. Applying a scheme has two halves that must agree:
`quantize_model` swaps the nn modules the compiler sees, `convert_param` turns a float weight into
the stored tensors those modules declare. Both are driven by the same `quantized` name set.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm.relax.frontend import nn

from ..models.base import Embedding
from . import cpu_kernels, int8_activations
from .group_quant import GroupQuantEmbedding, GroupQuantLinear, GroupQuantSpec, dequantize_array, quantize_array


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    name: str
    model_dtype: str  # activations, norms, scales
    weight: GroupQuantSpec | None = None  # None: weights kept in model_dtype
    # Quantize each matmul's input row to int8 per group (int8_activations.py): integer dot
    # products on the CPU.
    int8_activations: bool = False
    scale_dtype: str | None = None  # of the stored scales and minima; None: model_dtype

    @property
    def stored_scale_dtype(self) -> str:
        return self.scale_dtype or self.model_dtype

    @property
    def needs_shader_f16(self) -> bool:
        return self.model_dtype == "float16"


SCHEMES: dict[str, QuantScheme] = {
    s.name: s
    for s in [
        QuantScheme("q0f32", "float32"),
        QuantScheme("q0f16", "float16"),
        QuantScheme("q4f32_1", "float32", GroupQuantSpec(bits=4, group_size=32)),
        QuantScheme("q4f16_1", "float16", GroupQuantSpec(bits=4, group_size=32)),
        QuantScheme("q4f32_0", "float32", GroupQuantSpec(bits=4, group_size=32, symmetric=True)),
        QuantScheme("q4f16_0", "float16", GroupQuantSpec(bits=4, group_size=32, symmetric=True)),
        QuantScheme("q8f32_1", "float32", GroupQuantSpec(bits=8, group_size=32)),
        QuantScheme("q8f16_1", "float16", GroupQuantSpec(bits=8, group_size=32)),
        QuantScheme("q4f16_2", "float16", GroupQuantSpec(bits=4, group_size=128)),
        # f16 scales and minima, as GGUF's Q4_1 stores them (lossless from such a file): decode
        # reads every weight byte once a token, and they are a third of q4f32_1's bytes.
        QuantScheme("q4f32_1a8", "float32", GroupQuantSpec(bits=4, group_size=32), int8_activations=True,
                    scale_dtype="float16"),
    ]
}


class UnknownQuantizationError(ValueError):
    pass


def get_scheme(name: str) -> QuantScheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise UnknownQuantizationError(
            f"unknown quantization {name!r}; choose one of: {', '.join(SCHEMES)}"
        ) from None


class SchemeDeviceError(ValueError):
    pass


def check_device(scheme: QuantScheme, device: str) -> None:
    """Refuse a scheme the device has no kernels for, naming the one to use instead."""
    if scheme.int8_activations and device != "cpu":
        plain = scheme.name.removesuffix("a8")
        raise SchemeDeviceError(
            f"{scheme.name} quantizes matmul inputs to int8 for the CPU's integer dot products; it has no kernels "
            f"for {device}: use {plain} there (the same 4-bit codes, f32 activations)")


class _SwapModules(nn.Mutator):
    def __init__(self, scheme: QuantScheme, device: str | None):
        self.scheme = scheme
        self.device = device
        self.quantized: dict[str, int] = {}  # unquantized weight name -> in_features
        self.layouts: dict[str, str] = {}  # stored parameter -> the layout the compiled model declares

    def _layout(self, name: str, out_features: int, in_features: int) -> str | None:
        spec = self.scheme.weight
        if self.device != "cpu" or spec is None or not cpu_kernels.eligible(out_features, in_features, spec, self.scheme.model_dtype):
            return None
        for part in ("q_weight", "q_scale", "q_min"):
            self.layouts[f"{name}.{part}"] = cpu_kernels.LAYOUT
        if spec.symmetric:
            del self.layouts[f"{name}.q_min"]
        return cpu_kernels.LAYOUT

    def _int8_activations(self, layout: str | None) -> bool:
        """The int8 kernels read the interleaved layout; a matrix without it (not a multiple of
        16 rows, ...) keeps f32 activations."""
        spec = self.scheme.weight
        return self.scheme.int8_activations and layout is not None and spec is not None and int8_activations.eligible(spec)

    def visit_module(self, name: str, node: nn.Module):
        spec, dtype = self.scheme.weight, self.scheme.model_dtype
        if spec is not None and isinstance(node, nn.Linear):
            self.quantized[f"{name}.weight"] = node.in_features
            layout = self._layout(name, node.out_features, node.in_features)
            return GroupQuantLinear(node.in_features, node.out_features, spec, dtype, bias=node.bias is not None, layout=layout,
                                    int8_activations=self._int8_activations(layout), scale_dtype=self.scheme.stored_scale_dtype)
        if spec is not None and isinstance(node, Embedding):
            self.quantized[f"{name}.weight"] = int(node.dim)
            layout = self._layout(name, int(node.num), int(node.dim))
            return GroupQuantEmbedding(int(node.num), int(node.dim), spec, dtype, layout=layout,
                                       int8_activations=self._int8_activations(layout), scale_dtype=self.scheme.stored_scale_dtype)
        return self.visit(name, node)


def quantize_model(model: nn.Module, scheme: QuantScheme, device: str | None = None
                   ) -> tuple[nn.Module, dict[str, int], dict[str, str]]:
    """Cast to the scheme's dtype and swap weight modules. Returns the model, the names that
    were quantized (-> in_features), and the stored tensors the model declares in another layout
    than the stored one (-> layout name): for `device="cpu"`, eligible matrices use cpu_kernels'
    interleaved rows, which the native runtime makes when it loads them."""
    model.to(scheme.model_dtype)
    swapper = _SwapModules(scheme, device)
    model = swapper.visit("", model)
    return model, swapper.quantized, swapper.layouts


def unquantized_kind(name: str, shape: tuple[int, ...]) -> str:
    """What a stored parameter left in float is, for a quantized scheme."""
    if name.endswith(".bias"):
        return "a bias vector"
    return "a norm weight" if len(shape) == 1 else "not a Linear or Embedding weight"


def unquantized_reason(name: str, shape: tuple[int, ...], scheme: QuantScheme) -> str:
    """Why a stored parameter holds plain floats (convert_weight lists every one)."""
    if scheme.weight is None:
        return f"{scheme.name} keeps every weight in {scheme.model_dtype}"
    size = f" ({shape[0]} values)" if len(shape) == 1 else ""
    return f"{unquantized_kind(name, shape)}{size}, kept in {scheme.model_dtype}"


def convert_param(name: str, weight: np.ndarray, scheme: QuantScheme, quantized: dict[str, int]) -> dict[str, np.ndarray]:
    """One float weight (our unquantized name) -> the stored tensors, named as the model declares."""
    if name in quantized:
        assert scheme.weight is not None
        stored = quantize_array(weight.astype(np.float32), scheme.weight, scheme.stored_scale_dtype)
        base = name[: -len(".weight")]
        return {f"{base}.{key}": value for key, value in stored.items()}
    return {name: weight.astype(scheme.model_dtype)}


__all__ = [
    "SCHEMES",
    "GroupQuantSpec",
    "QuantScheme",
    "SchemeDeviceError",
    "check_device",
    "UnknownQuantizationError",
    "convert_param",
    "dequantize_array",
    "get_scheme",
    "quantize_model",
    "unquantized_kind",
    "unquantized_reason",
]

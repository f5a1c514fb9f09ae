"""The built-in PTQ's quantizer for a recipe group: which tensor math a scheme means.

A scheme is data (quant/recipe.py); this module is the one place that says which of the built-in
quantizers computes it, or why none does. The quantizers themselves are pure tensor math (ptq.py,
rtn.py, fp8_block.py).
"""

from __future__ import annotations

from .ptq import ChannelMethod, Method
from .recipe import Recipe, Scheme


class UnsupportedSchemeError(ValueError):
    """The built-in PTQ has no quantizer for this scheme (the message says what it does have)."""


SUPPORTED = (
    "INT8 or FP8 E4M3 weights per channel, symmetric (activations none or dynamic per token); "
    "FP8 E4M3 weights in 128 x 128 blocks (activations dynamic per group of 128); "
    "INT4 weights in groups, symmetric, format pack-quantized; "
    "INT4 weights in groups, symmetric or with zero points, in a gptq-format recipe"
)


def build(scheme: Scheme, recipe: Recipe) -> Method:
    """The built-in quantizer for one of the recipe's schemes; UnsupportedSchemeError when there is none."""
    if recipe.algorithm != "rtn":
        raise UnsupportedSchemeError(
            f"the built-in PTQ rounds to nearest without calibration; algorithm {recipe.algorithm} needs "
            "another backend"
        )
    if scheme.input_activations and not scheme.activations_dynamic:
        raise UnsupportedSchemeError("static activation scales need calibration: the built-in PTQ has none")
    if recipe.checkpoint_format == "gptq":
        return _gptq(scheme, recipe.name)
    if recipe.checkpoint_format != "compressed-tensors":
        raise UnsupportedSchemeError(f"the built-in PTQ does not write checkpoint format {recipe.checkpoint_format}")
    if scheme.bits == 8 and scheme.strategy == "channel" and scheme.symmetric:
        _check_activations(scheme, "token")
        return ChannelMethod(recipe.name, scheme.weight_type, activations_dynamic=scheme.activations_dynamic)
    if scheme.bits == 8 and scheme.weight_type == "float" and scheme.block is not None:
        from .fp8_block import FP8Block

        if scheme.block[0] != scheme.block[1]:
            raise UnsupportedSchemeError(f"block FP8 needs square blocks, not {scheme.block}")
        _check_activations(scheme, "group")
        return FP8Block(recipe.name, scheme.block[0])
    if (
        scheme.bits == 4
        and scheme.weight_type == "int"
        and scheme.strategy == "group"
        and scheme.symmetric
        and scheme.format == "pack-quantized"
        and scheme.group_size
    ):
        from .rtn import PackedInt4

        return PackedInt4(recipe.name, group_size=scheme.group_size)
    raise UnsupportedSchemeError(f"no built-in quantizer for {scheme.describe_weights()}: it has {SUPPORTED}")


def _check_activations(scheme: Scheme, strategy: str) -> None:
    acts = scheme.input_activations
    if acts and (str(acts.get("strategy")) != strategy or acts.get("type") != scheme.weight_type):
        raise UnsupportedSchemeError(
            f"activations {scheme.describe_activations()} with weights {scheme.describe_weights()}: the built-in "
            f"kernels' layouts pair them {strategy}-wise in the weights' type"
        )


def _gptq(scheme: Scheme, name: str) -> Method:
    from .rtn import RTNInt4

    if not (scheme.bits == 4 and scheme.weight_type == "int" and scheme.strategy == "group" and scheme.group_size):
        raise UnsupportedSchemeError(f"the gptq format stores INT4 groups, not {scheme.describe_weights()}")
    return RTNInt4(name, symmetric=scheme.symmetric, group_size=scheme.group_size)

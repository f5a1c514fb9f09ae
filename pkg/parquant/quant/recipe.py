"""A quantization as data: an ordered list of (targets, scheme) groups, ignore patterns, the algorithm.

Each scheme is compressed-tensors' own `QuantizationScheme` (its `weights` and `input_activations`
`QuantizationArgs` and its `format`), kept as the JSON fields the library validates and writes, so
the recipe, the config.json block and what vLLM or transformers read are one description. Every
registry method is a preset recipe (quant/methods.py); a user may write one as YAML with per-layer
mixes (`quantize --recipe FILE`, quant/recipe_file.py). Everything that used to be spelled per
method is derived from the recipe: the docs table's columns, the built-in quantizer of each module
(quant/builders.py), the config.json block (one `config_groups` entry per group), AngelSlim's
section (quant/angelslim.py), and, through the same targets rule (quant/targets.py), the
dequantizer's choice of a module's scheme.

Targets follow compressed-tensors' rules, which loaders apply to the written config: `Linear`
(every linear layer), `re:<pattern>` (`re.match` on the module name) or an exact module name.
Ignore patterns follow `--ignore`'s (glob, exact or trailing name). A module matched by two
groups is refused: the loaders would each pick one, and not necessarily the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .linear_layers import is_ignored
from .targets import selected, targeted

# How the values are found: data-free round to nearest (rtn), calibrated static scales (minmax),
# or an error-correcting / scale-searching algorithm over calibration data.
ALGORITHMS = ("rtn", "minmax", "gptq", "gptaq", "awq", "smoothquant")
CALIBRATED_ALGORITHMS = frozenset({"minmax", "gptq", "gptaq", "awq", "smoothquant"})
CHECKPOINT_FORMATS = ("compressed-tensors", "gptq", "awq")
PRESET = "preset"  # a Recipe's source when it is a registry method's


@dataclass(frozen=True)
class Scheme:
    """One compressed-tensors QuantizationScheme without its targets (its JSON fields)."""

    weights: Mapping[str, Any]
    input_activations: Mapping[str, Any] | None = None
    format: str | None = None

    def fields(self) -> dict[str, Any]:
        """The scheme's fields as the library takes them (targets are the group's)."""
        fields: dict[str, Any] = {"weights": dict(self.weights), "input_activations": None}
        if self.input_activations is not None:
            fields["input_activations"] = dict(self.input_activations)
        fields["output_activations"] = None
        if self.format is not None:
            fields["format"] = self.format
        return fields

    @property
    def bits(self) -> int:
        return int(self.weights.get("num_bits", 8))

    @property
    def weight_type(self) -> str:
        return str(self.weights.get("type", "int"))

    @property
    def strategy(self) -> str:
        return str(self.weights.get("strategy") or "tensor")

    @property
    def symmetric(self) -> bool:
        return bool(self.weights.get("symmetric", True))

    @property
    def group_size(self) -> int | None:
        size = self.weights.get("group_size")
        return int(size) if size is not None else None

    @property
    def block(self) -> tuple[int, int] | None:
        structure = self.weights.get("block_structure")
        if self.strategy == "block" and isinstance(structure, list | tuple) and len(structure) == 2:
            return int(structure[0]), int(structure[1])
        return None

    @property
    def activations_dynamic(self) -> bool:
        return bool(self.input_activations and self.input_activations.get("dynamic") is True)

    def describe_weights(self) -> str:
        return _describe(self.weights, weights=True)

    def describe_activations(self) -> str:
        if not self.input_activations:
            return "16-bit"
        return _describe(self.input_activations, weights=False)


def _describe(args: Mapping[str, Any], weights: bool) -> str:
    """'INT4, group 128, symmetric', 'FP8 E4M3, per channel', 'FP8, dynamic per token'..."""
    bits, kind = int(args.get("num_bits", 8)), str(args.get("type", "int"))
    name = f"INT{bits}" if kind == "int" else {8: "FP8 E4M3", 4: "FP4 E2M1"}.get(bits, f"FP{bits}")
    if not weights:
        name = name.split()[0]
    strategy = str(args.get("strategy") or "tensor")
    where = {
        "tensor": "per tensor",
        "channel": "per channel",
        "token": "per token",
        "group": f"group {args.get('group_size')}",
        "tensor_group": f"block {args.get('group_size')} under a per-tensor scale",
        "block": "blocks of {} x {}".format(*(args.get("block_structure") or ["?", "?"])),
    }.get(strategy, strategy)
    parts = [name]
    if not weights and args.get("dynamic") == "local":  # NVFP4: block scales at run time, a calibrated global one
        parts.append(f"dynamic block {args.get('group_size')} scales under a static per-tensor scale")
    elif not weights:
        parts.append(("dynamic " if args.get("dynamic") else "static ") + where)
    else:
        parts.append(where)
        parts.append("symmetric" if args.get("symmetric", True) else "zero point")
    return ", ".join(parts)


@dataclass(frozen=True)
class RecipeGroup:
    targets: tuple[str, ...]
    scheme: Scheme

    def matches(self, module: str) -> bool:
        return targeted(module, self.targets)


@dataclass(frozen=True)
class Recipe:
    """What to quantize how. `name` is the preset's method name, or the recipe file's name."""

    name: str
    groups: tuple[RecipeGroup, ...]
    ignore: tuple[str, ...] = ()
    algorithm: str = "rtn"
    checkpoint_format: str = "compressed-tensors"
    source: str = field(default=PRESET, compare=False)  # the file it came from, for messages

    @property
    def calibrated(self) -> bool:
        return self.algorithm in CALIBRATED_ALGORITHMS

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        """The distinct schemes, in the order their groups come."""
        seen: list[Scheme] = []
        for group in self.groups:
            if group.scheme not in seen:
                seen.append(group.scheme)
        return tuple(seen)

    @property
    def single(self) -> Scheme:
        """The scheme of a one-group recipe (what whole-model presets are)."""
        if len(self.groups) != 1:
            raise ValueError(f"recipe {self.name} has {len(self.groups)} groups")
        return self.groups[0].scheme

    def with_ignore(self, ignore: Iterable[str]) -> Recipe:
        """This recipe with `ignore` patterns added (the run's --ignore / defaults)."""
        merged = tuple(dict.fromkeys([*self.ignore, *ignore]))
        return Recipe(self.name, self.groups, merged, self.algorithm, self.checkpoint_format, self.source)

    def assign(self, modules: Iterable[str], every_group_used: bool = True) -> dict[str, int]:
        """{module: index of its group} for the modules a group targets and no ignore pattern names.

        Raises RecipeError when a module matches two groups, or (`every_group_used`: a recipe file)
        when a group matches none."""
        ignore = list(self.ignore)
        live = [module for module in sorted(modules) if not is_ignored(module, ignore)]
        members = [set(selected(live, group.targets)) for group in self.groups]  # one pass per group
        assigned: dict[str, int] = {}
        for module in live:
            found = [index for index, chosen in enumerate(members) if module in chosen]
            if len(found) > 1:
                raise RecipeError(
                    f"{self.source}: module {module} is matched by groups {found[0]} and {found[1]} "
                    f"({', '.join(self.groups[found[0]].targets)} / {', '.join(self.groups[found[1]].targets)}): "
                    "make the targets disjoint (a loader would pick one of them)"
                )
            if found:
                assigned[module] = found[0]
        for index, chosen in enumerate(members):
            if every_group_used and not chosen:
                raise RecipeError(
                    f"{self.source}: group {index} (targets {', '.join(self.groups[index].targets)}) matches no "
                    "linear layer of this model outside the ignore list: fix its targets (module names, `re:` "
                    "patterns or Linear)"
                )
        return assigned

    def group_of(self, module: str) -> RecipeGroup | None:
        """The group a module belongs to (the first that targets it), ignore patterns aside."""
        return next((group for group in self.groups if group.matches(module)), None)


class RecipeError(ValueError):
    """A recipe does not fit the model (a group matching nothing, overlapping groups)."""

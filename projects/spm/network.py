"""The concept-semipermeable membrane (SPM): rank-1 adapters on a frozen diffusers UNet, and its file format
(docs/papers/spm.md §1).

Paper Eq. 1 (§1.1): ``y = W x + (v_reg^T x) v_sig``. ``v_reg`` is ``lora_down`` (Kaiming-uniform init), ``v_sig`` is
``lora_up`` (zero init), so the membrane is the identity at init. As in the official ``SPMNetwork``, every
``nn.Linear`` / ``nn.Conv2d`` inside each ``Transformer2DModel`` of the UNet is adapted (192 layers, 423,936
parameters for SD v1.x); text encoder, ResNets, time embedding, conv_in/conv_out are not.

The UNet is not modified: each adapted layer gets a forward hook that adds the branch to its output, so the
base weights stay frozen and bit-identical; the hooks are attached only while the multiplier is non-zero, so with
the membrane off the UNet runs its plain forward (the official ``org_forward(x) + up(down(x)) * 0`` still computes
the branch), the UNet's own state dict keeps its keys, and several membranes can
be attached to one UNet (their branches add up: Eq. 9 with one ``multiplier`` = gamma_c per membrane).
``multiplier`` may be a float or a tensor of shape ``[B]`` (one gamma per sample of the UNet batch), which is
what Facilitated Transport needs.

Files are safetensors in the kohya / A1111 LoRA layout the official code writes:
``lora_unet_<module path with _>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``, with metadata ``prompts``
(comma-joined erased concepts), ``rank`` and ``alpha``.

SD v2.x and SDXL UNets (``use_linear_projection``) have linear ``proj_in``/``proj_out``, adapted as Linear layers;
SDXL's Transformer2DModels hold 1-10 transformer blocks, all adapted (official ``train_spm_xl.py`` builds the same
``SPMNetwork``). An SPM only loads into a UNet of the family it was trained on (§4): a mismatch names the file,
a key, both shapes and the two families (:func:`family_mismatch`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from shared.backbones.weights import not_safetensors

PREFIX_UNET = "lora_unet"
TARGET_BLOCKS = ("Transformer2DModel",)  # official DEFAULT_TARGET_REPLACE


@dataclass(frozen=True)
class Membrane:
    """The shape of the membrane being trained (§1.1-1.2): the adapters' ``rank`` (1 throughout the paper) and
    ``alpha`` (the branch is scaled by alpha / rank; None or 0 means the rank)."""

    rank: int = 1
    alpha: float | None = 1.0

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ValueError(f"model.membrane.rank must be >= 1; got {self.rank}")


def kohya_name(module_path: str) -> str:
    """``down_blocks.0.attentions.0.proj_in`` -> ``lora_unet_down_blocks_0_attentions_0_proj_in``."""
    return f"{PREFIX_UNET}_{module_path.replace('.', '_')}"


def adapted_layers(unet: nn.Module, target_blocks: Sequence[str] = TARGET_BLOCKS
                   ) -> dict[str, tuple[str, nn.Linear | nn.Conv2d]]:
    """``{kohya name: (module path, layer)}`` of every Linear/Conv2d inside the target blocks (official
    ``create_modules``), in ``named_modules`` order; nested target blocks are adapted once."""
    out: dict[str, tuple[str, nn.Linear | nn.Conv2d]] = {}
    for block_path, block in unet.named_modules():
        if type(block).__name__ not in target_blocks:
            continue
        for sub_path, layer in block.named_modules():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                path = f"{block_path}.{sub_path}"
                out.setdefault(kohya_name(path), (path, layer))
    return out


def unet_family(unet: nn.Module) -> str | None:
    """``SDXL`` (added "text_time" conditioning), ``SD v2.x`` (linear proj_in) or ``SD v1.x`` (conv proj_in), from a
    diffusers UNet's config; None without one."""
    config = getattr(unet, "config", None)
    if config is None:
        return None
    if getattr(config, "addition_embed_type", None) == "text_time":
        return "SDXL"
    return "SD v2.x" if getattr(config, "use_linear_projection", False) else "SD v1.x"


def spm_family(state: dict[str, torch.Tensor]) -> str | None:
    """The family an SPM state (kohya keys, with or without ``adapters.``) was trained on, from its layout: several
    transformer blocks per Transformer2DModel -> SDXL, else a conv (4-D) ``proj_in`` -> SD v1.x, a linear one ->
    SD v2.x; None if it has no proj_in key."""
    if any("_transformer_blocks_1_" in key for key in state):
        return "SDXL"
    down = next((v for k, v in state.items() if k.endswith("proj_in.lora_down.weight")), None)
    if down is None:
        return None
    return "SD v1.x" if down.ndim == 4 else "SD v2.x"


def family_mismatch(state: dict[str, torch.Tensor], own_shapes: dict[str, tuple], unet: nn.Module,
                    source: str) -> str | None:
    """One error line when ``state`` (an SPM) was trained on another family than ``unet``'s, else None.

    ``own_shapes``: this UNet's SPM keys -> shapes. Names the first key in both with different shapes (both
    shapes), or else the first missing key (this UNet's shape) and one of the file's keys (its shape)."""
    state = {k.removeprefix("adapters."): v for k, v in state.items()}
    own_shapes = {k.removeprefix("adapters."): tuple(v) for k, v in own_shapes.items()}
    theirs, ours = spm_family(state), unet_family(unet)
    if theirs is None or ours is None or theirs == ours:
        return None
    shared = [k for k in sorted(own_shapes) if k in state and tuple(state[k].shape) != own_shapes[k]]
    if shared:
        key = shared[0]
        where = f"key {key!r} has shape {tuple(state[key].shape)} in the file but this UNet needs {own_shapes[key]}"
    else:
        key = next((k for k in sorted(own_shapes) if k not in state), None)
        if key is None:  # same keys and shapes: nothing to tell apart, the ordinary checks decide
            return None
        other = next(k for k in sorted(state) if k.endswith(".lora_down.weight"))
        where = (f"key {key!r} (this UNet needs shape {own_shapes[key]}) is missing from the file, which has e.g. "
                 f"{other!r} (shape {tuple(state[other].shape)})")
    return f"{source}: {where}: an {theirs} SPM cannot load into an {ours} UNet (train the SPM on this family)"


class SPMAdapter(nn.Module):
    """The rank-r branch of one layer: ``up(down(x)) * alpha / rank`` (Linear or Conv2d like the wrapped layer)."""

    def __init__(self, base: nn.Module, rank: int = 1, alpha: float | None = 1.0) -> None:
        super().__init__()
        if isinstance(base, nn.Linear):
            rank = min(rank, base.in_features, base.out_features)
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        elif isinstance(base, nn.Conv2d):
            rank = min(rank, base.in_channels, base.out_channels)
            self.lora_down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                       bias=False)
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        else:
            raise TypeError(f"SPMAdapter wraps nn.Linear or nn.Conv2d, got {type(base).__name__}")
        self.rank = rank
        alpha = float(alpha) if alpha else float(rank)  # official: None or 0 -> rank
        self.register_buffer("alpha", torch.tensor(alpha))
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_up(self.lora_down(x)) * (self.alpha / self.rank)


def remove_hooks(handles: list) -> None:
    """Remove every hook in ``handles`` (``register_forward_hook`` results) and empty the list."""
    for handle in handles:
        handle.remove()
    handles.clear()


class SPMNetwork(nn.Module):
    """One SPM attached to ``unet`` through forward hooks.

    ``multiplier`` (gamma) scales the branch: 0 switches it off (the original model), 1 is the trained SPM;
    a ``[B]`` tensor gives one value per sample. ``with network.applied(0.0): ...`` sets it temporarily.
    Adapters live in ``self.adapters`` keyed by their kohya name, so ``state_dict()`` is already the file layout.
    """

    def __init__(self, unet: nn.Module, rank: int = 1, alpha: float | None = 1.0,
                 target_blocks: Sequence[str] = TARGET_BLOCKS, multiplier: float = 1.0) -> None:
        super().__init__()
        self.rank, self.alpha = rank, float(alpha) if alpha else float(rank)
        self.adapters = nn.ModuleDict()
        self._layers: list[tuple[nn.Module, SPMAdapter]] = []  # plain list: the UNet's layers are not submodules
        self._handles: list = []
        self._removed = False
        self._unet = [unet]  # not a submodule (for family checks when loading)
        for name, (_, layer) in adapted_layers(unet, target_blocks).items():
            adapter = SPMAdapter(layer, rank, alpha)
            adapter.to(device=layer.weight.device, dtype=layer.weight.dtype)
            self.adapters[name] = adapter
            self._layers.append((layer, adapter))
        if not self.adapters:
            raise ValueError(f"SPMNetwork found no {'/'.join(target_blocks)} with Linear/Conv2d layers in "
                             f"{type(unet).__name__}; expected a diffusers UNet2DConditionModel")
        self.multiplier = multiplier

    @property
    def multiplier(self) -> float | torch.Tensor:
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float | torch.Tensor) -> None:
        """Set gamma; the hooks are attached while it is non-zero and detached at 0 (no per-layer dispatch)."""
        self._multiplier = value
        off = self._removed or (not isinstance(value, torch.Tensor) and value == 0)
        if off:
            self._detach()
        elif not self._handles:
            self._handles = [layer.register_forward_hook(self._hook(adapter, layer.weight))
                             for layer, adapter in self._layers]

    def _detach(self) -> None:
        remove_hooks(self._handles)

    def _hook(self, adapter: SPMAdapter, base_weight: torch.Tensor):
        def add_branch(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            gamma = self._multiplier
            if module.weight is not base_weight:   # merged SPM weights swapped in: this branch would add it twice
                raise RuntimeError("an SPM membrane is attached (multiplier != 0) to a UNet layer whose weights were "
                                   "swapped for other ones (merged_weights + swapped_parameters): the membrane would "
                                   "be applied twice; merge or swap inside `with network.applied(0.0):`")
            if isinstance(gamma, torch.Tensor) and gamma.ndim == 1:  # per-sample gamma over the UNet batch
                gamma = gamma.view(-1, *([1] * (output.ndim - 1)))
            return output + adapter(inputs[0]) * gamma
        return add_branch

    def remove(self) -> None:
        """Detach the hooks for good (the UNet is back to its original forward whatever the multiplier)."""
        self._removed = True
        self._detach()

    @contextlib.contextmanager
    def applied(self, multiplier: float | torch.Tensor = 1.0) -> Iterator[SPMNetwork]:
        """Temporarily set the permeability (0 = original model)."""
        previous, self.multiplier = self.multiplier, multiplier
        try:
            yield self
        finally:
            self.multiplier = previous

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def merged_weights(self, unet: nn.Module, gamma: float = 1.0) -> dict[str, torch.Tensor]:
        """``{unet param name: W + gamma * scale * up @ down}`` for the adapted layers, for
        ``swapped_parameters`` / ``torch.func.functional_call`` with this membrane off (multiplier 0).

        No-grad sampling with the membrane on then costs one matmul per layer instead of three; the UNet's own
        parameters are not modified.
        """
        out = {}
        for path, layer in unet.named_modules():
            name = kohya_name(path)
            if name not in self.adapters or not isinstance(layer, nn.Linear | nn.Conv2d):
                continue
            adapter = self.adapters[name]
            delta = adapter.lora_up.weight.flatten(1) @ adapter.lora_down.weight.flatten(1)
            scale = adapter.alpha / adapter.rank * gamma
            out[f"{path}.weight"] = layer.weight + delta.view(layer.weight.shape) * scale
        return out

    # ----------------------------------------------------------------- kohya safetensors
    def load_spm_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strict load with a clear error: the first missing/unexpected key or shape mismatch is named (and, for an
        SPM of another family, both families)."""
        own = self.state_dict()
        mismatch = family_mismatch(state, {k: v.shape for k, v in own.items()}, self._unet[0], source)
        if mismatch:
            raise ValueError(mismatch)

        def show(key: str) -> str:  # the key as the file spells it
            return repr(key.removeprefix("adapters."))

        for key in sorted(own):
            if key not in state:
                extra = sorted(set(state) - set(own))
                hint = f"; the file has e.g. {show(extra[0])} instead" if extra else ""
                raise ValueError(f"{source}: key {show(key)} (shape {tuple(own[key].shape)} in this UNet) is missing "
                                 f"from the file{hint}; the SPM was trained on a UNet with other module names")
            if tuple(state[key].shape) != tuple(own[key].shape):
                raise ValueError(f"{source}: key {show(key)} has shape {tuple(state[key].shape)} in the file but "
                                 f"{tuple(own[key].shape)} in this UNet; the SPM was trained on another base model "
                                 f"(e.g. SD v1 vs v2/XL) or with another rank")
        for key in sorted(state):
            if key not in own:
                raise ValueError(f"{source}: unexpected key {show(key)} (shape {tuple(state[key].shape)}); this UNet "
                                 f"has no such adapted layer (expected only {PREFIX_UNET}_* keys of its "
                                 f"Transformer2DModel layers)")
        with torch.no_grad():
            for key, value in own.items():
                value.copy_(state[key].to(dtype=value.dtype, device=value.device))

    def save(self, path: str | Path, prompts: Sequence[str], dtype: torch.dtype = torch.float32) -> Path:
        """Write the kohya-layout safetensors file with metadata ``prompts``, ``rank``, ``alpha``."""
        return save_spm_file(self.state_dict(), path, prompts, self.rank, self.alpha, dtype)

    @classmethod
    def from_file(cls, unet: nn.Module, path: str | Path, multiplier: float = 1.0) -> SPMNetwork:
        """Build a membrane on ``unet`` with the rank/alpha of an SPM file and load its weights."""
        state, meta = load_spm_file(path)
        downs = [v for k, v in state.items() if k.endswith(".lora_down.weight")]
        if not downs:
            raise ValueError(f"{path}: no '*.lora_down.weight' keys; not a kohya-layout SPM/LoRA file")
        rank = int(meta.get("rank") or downs[0].shape[0])
        alpha = float(meta.get("alpha") or rank)
        net = cls(unet, rank=rank, alpha=alpha, multiplier=multiplier)
        try:
            net.load_spm_state_dict(state, source=str(path))
        except ValueError:
            net.remove()  # a file that does not fit leaves the UNet as it was
            raise
        net.prompts = spm_prompts(meta)
        return net


def save_spm_file(state: dict[str, torch.Tensor], path: str | Path, prompts: Sequence[str], rank: int,
                  alpha: float, dtype: torch.dtype = torch.float32) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k.removeprefix("adapters."): v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    tensors = {k: v for k, v in tensors.items() if k.startswith(PREFIX_UNET)}
    save_file(tensors, str(path), metadata={"prompts": ",".join(prompts), "rank": str(rank), "alpha": str(alpha)})
    return path


def load_spm_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read an SPM (or kohya LoRA) safetensors file: (tensors, metadata). Keys get the ``adapters.`` prefix back."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SPM file {path} does not exist (expected a .safetensors file)")
    if path.suffix != ".safetensors":
        raise ValueError(f"SPM file {path}: expected a .safetensors file (kohya lora_unet_* layout)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {f"adapters.{k}": f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(not_safetensors(path, err)) from None
    if not any(k.endswith(".lora_down.weight") for k in state):
        raise ValueError(f"SPM file {path}: no '*.lora_down.weight' keys (its keys begin "
                         f"{sorted(k.removeprefix('adapters.') for k in state)[:3]}); expected an SPM / LoRA file in "
                         f"the kohya layout ({PREFIX_UNET}_*.lora_down.weight / .lora_up.weight)")
    return state, meta


def spm_prompts(meta: dict[str, str]) -> list[str]:
    """The erased concept strings from the ``prompts`` metadata (comma-joined, as the official code writes)."""
    return [p.strip() for p in meta.get("prompts", "").split(",") if p.strip()]

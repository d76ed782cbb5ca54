"""Many SPMs on one UNet at once, with a different permeability per sample (paper Eq. 9; docs/papers/spm.md §1.5, §4).

``mode="linear"`` (paper Eq. 9, default): ``y = W x + sum_c gamma[b, c] * s_c * U_c (D_c x)``, with ``s_c =
alpha_c / rank_c``. Per adapted layer the C downs are stacked into one ``[C*r, in]`` (or conv) weight and the C
ups (scale folded in) into one ``[out, C*r]``, so the branch of all SPMs for a whole batch is two small products
and one multiply by the per-sample gammas, in one forward hook per layer.

``mode="official"``: what the official inference code does (``infer_spm.py`` / ``evaluate_task.py``): it loads
the gamma-weighted sums ``sum_c gamma_c D_c`` and ``sum_c gamma_c U_c`` into one rank-r network, so
``Delta W = s (sum_c gamma_c U_c)(sum_c gamma_c D_c)``: gamma squared per SPM plus cross terms. Its scale ``s`` is
fixed when the network is built (from the first SPM's alpha/rank; the summed alpha buffer has no effect), so ours
uses the first SPM's alpha/rank as well; all SPMs need the same rank (the official code asserts it).

Transfer (paper 4.2): the states only need the same adapted-layer names and shapes, so SPMs trained on one UNet
load into any UNet with the same layout (SD v1.4 -> v1.5 and SD1.x community models in diffusers format; SD v2.x and
SDXL SPMs compose on their own family the same way); an incompatible UNet gets an error naming the file, the first
mismatching key and both shapes, and for an SPM of another family both families ("an SD v1.x SPM cannot load into
an SDXL UNet").

The forward hooks are attached only inside :meth:`SPMComposition.applied`: outside it the UNet runs its plain
forward (the original model, no per-layer dispatch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from projects.spm.diffusion.model import swapped_parameters
from projects.spm.network import (
    TARGET_BLOCKS,
    adapted_layers,
    family_mismatch,
    load_spm_file,
    remove_hooks,
    spm_prompts,
)

MODES = ("linear", "official")


class _Stack(nn.Module):
    """The C stacked branches of one layer: ``down`` [R, in*kh*kw], ``up`` [out, R] (alpha/rank folded in),
    ``owner`` [R]: the SPM of each of the R = sum_c r_c rank rows, ``ranks``: r_c (official mode: all equal).

    :meth:`prepare` turns a gamma set into what the hot path needs, once per :meth:`SPMComposition.applied` and
    UNet batch size (gammas are constant over the denoising steps). Hot path (:meth:`add_branches`), per layer:
    - linear mode, one gamma row for the whole batch: ``y + (U g) (D x)``: a matmul and a fused add-matmul;
    - linear mode, per-sample gammas: ``y + U ((D x) * g_b)``: the same plus one in-place multiply;
    - official mode: ``y + (sum_c g_c U_c)((sum_c g_c D_c) x)`` with the two sums prepared (rank r, batched
      per sample when the rows differ).
    1x1 convolutions (SD's ``proj_in``/``proj_out``) run as matmuls over the flattened pixels.
    """

    def __init__(self, layer: nn.Linear | nn.Conv2d, downs: list[torch.Tensor], ups: list[torch.Tensor]) -> None:
        super().__init__()
        kw = dict(device=layer.weight.device, dtype=layer.weight.dtype)
        self.register_buffer("down", torch.cat(downs).flatten(1).to(**kw), persistent=False)
        self.register_buffer("up", torch.cat(ups, dim=1).flatten(1).to(**kw), persistent=False)
        self.ranks = tuple(d.shape[0] for d in downs)
        owner = [c for c, r in enumerate(self.ranks) for _ in range(r)]
        self.register_buffer("owner", torch.tensor(owner, device=layer.weight.device), persistent=False)
        self.kind = "linear"
        if isinstance(layer, nn.Conv2d):
            pointwise = layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding in ((0, 0), "valid")
            self.kind = "conv1x1" if pointwise else "conv"
            self.kernel, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding

    def prepare(self, gammas: torch.Tensor, official: bool, uniform: bool) -> tuple:
        """``(d, u, g, mix)`` for a gamma set [N, C]: the down weight ([R', in] shared or [N, R', in]), the up
        weight ([out, R'] or [N, out, R']), the per-row multiplier of ``D x`` ([N, R'] or None) and, for a general
        conv in official mode with per-sample gammas, the [N, C] mixing of the C stacked conv outputs.
        ``uniform``: all N rows are equal (e.g. one prompt with its CFG uncond row): shared weights, no multiply."""
        g = gammas.to(self.down)
        if not official:
            if uniform:
                return self.down, self.up * g[0, self.owner], None, None
            return self.down, self.up, g[:, self.owner], None
        c, r = len(self.ranks), self.ranks[0]
        rows = g[:1] if uniform else g
        down = torch.einsum("nc,cri->nri", rows, self.down.view(c, r, -1))
        up = torch.einsum("nc,ocr->nor", rows, self.up.view(-1, c, r))
        if uniform:
            return down[0], up[0], None, None
        if self.kind == "conv":  # per-sample downs cannot go into one conv2d: mix the C conv outputs instead
            return self.down, up, None, g
        return down, up, None, None

    def add_branches(self, x: torch.Tensor, output: torch.Tensor, prep: tuple) -> torch.Tensor:
        d, u, g, mix = prep
        n = x.shape[0]
        # Without autograd the branch is added into the layer's fresh output in place (one less activation write).
        inplace = not torch.is_grad_enabled()
        if self.kind == "linear":  # tokens last: [N, M, in] -> [N, M, out]
            x3, out3 = x.reshape(n, -1, x.shape[-1]), output.reshape(n, -1, output.shape[-1])
            h = F.linear(x3, d) if d.ndim == 2 else torch.bmm(x3, d.transpose(1, 2))
            if g is not None:
                h.mul_(g.unsqueeze(1))
            if u.ndim == 2:
                y, h, u = out3.flatten(0, 1), h.flatten(0, 1), u.T
                return (y.addmm_(h, u) if inplace else torch.addmm(y, h, u)).view(output.shape)
            u = u.transpose(1, 2)
            return (out3.baddbmm_(h, u) if inplace else torch.baddbmm(out3, h, u)).view(output.shape)
        if self.kind == "conv1x1":  # channels first: [N, in, H*W] -> [N, out, H*W]
            h = d @ x.flatten(2)
        else:
            h = F.conv2d(x, d.view(d.shape[0], -1, *self.kernel), None, self.stride, self.padding).flatten(2)
            if mix is not None:
                h = torch.einsum("nc,ncrp->nrp", mix, h.unflatten(1, (len(self.ranks), -1)))
        if g is not None:
            h.mul_(g.unsqueeze(-1))
        y, u = output.flatten(2), (u if u.ndim == 3 else u.expand(n, -1, -1))
        return (y.baddbmm_(u, h) if inplace else torch.baddbmm(y, u, h)).view(output.shape)

    def delta_weight(self, gamma: torch.Tensor, official: bool, shape: torch.Size) -> torch.Tensor:
        """``Delta W`` for one gamma set [C] (for merging)."""
        down, up, _, _ = self.prepare(gamma.view(1, -1), official, uniform=True)
        return (up @ down).view(shape)


class SPMComposition(nn.Module):
    """C SPMs on one UNet, applied per sample: ``y = W x + sum_c gamma[b, c] (v_reg,c^T x) v_sig,c`` (Eq. 9,
    linear) as one batched low-rank product per layer; ``mode="official"``: the released code's gamma-weighted
    sums of downs and of ups (gamma^2 and cross terms).

    ``states[c]``: SPM c's tensors in the kohya layout (``lora_unet_*.lora_down.weight``, ``.lora_up.weight``,
    optional ``.alpha``; an ``adapters.`` prefix is accepted), ``concepts[c]``: its concept strings, ``names[c]``:
    where it came from (for error messages).
    """

    def __init__(self, unet: nn.Module, states: list[dict[str, torch.Tensor]], concepts: list[list[str]],
                 mode: str = "linear", names: list[str] | None = None,
                 target_blocks: Sequence[str] = TARGET_BLOCKS) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"SPMComposition mode {mode!r} is not one of {MODES}")
        if not states:
            raise ValueError("SPMComposition needs at least one SPM state")
        if len(concepts) != len(states):
            raise ValueError(f"{len(states)} SPM states but {len(concepts)} concept lists; expected one per SPM")
        self.mode, self.concepts = mode, [list(c) for c in concepts]
        self.names = list(names) if names is not None else [f"SPM {i}" for i in range(len(states))]
        if len(self.names) != len(states):
            raise ValueError(f"{len(states)} SPM states but {len(self.names)} names; expected one per SPM")
        self._unet = [unet]  # not a submodule: the composition's own state is only its stacks
        layers = adapted_layers(unet, target_blocks)
        if not layers:
            raise ValueError(f"SPMComposition found no {'/'.join(target_blocks)} with Linear/Conv2d layers in "
                             f"{type(unet).__name__}; expected a diffusers UNet2DConditionModel")
        states = [{k.removeprefix("adapters."): v for k, v in s.items()} for s in states]
        for state, name in zip(states, self.names, strict=True):
            check_state(state, layers, name, unet)
        self.stacks = nn.ModuleDict()
        self._paths: dict[str, str] = {}
        for key, (path, layer) in layers.items():
            downs = [s[f"{key}.lora_down.weight"] for s in states]
            ranks = [d.shape[0] for d in downs]
            # A file without .alpha keys (some kohya tools) means alpha = rank, i.e. scale 1.
            alphas = [float(s.get(f"{key}.alpha", r)) for s, r in zip(states, ranks, strict=True)]
            if mode == "official":
                if len(set(ranks)) > 1:
                    raise ValueError(f"mode='official' sums the SPMs' downs and ups, so they need one rank; layer "
                                     f"{key} has ranks {dict(zip(self.names, ranks, strict=True))}")
                scales = [alphas[0] / ranks[0]] * len(states)  # fixed at network build in the official code
            else:
                scales = [a / r for a, r in zip(alphas, ranks, strict=True)]
            ups = [s[f"{key}.lora_up.weight"].float() * sc for s, sc in zip(states, scales, strict=True)]
            self.stacks[key] = _Stack(layer, [d.float() for d in downs], ups)
            self._paths[key] = path
        self._gammas: torch.Tensor | None = None
        self._uniform = True
        self._cache: dict[tuple[str, int], tuple] = {}
        self._handles: list = []
        self._removed = False
        self.merge_uniform = True  # see :meth:`applied`

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_files(cls, unet: nn.Module, paths: Sequence[str | Path], mode: str = "linear") -> SPMComposition:
        """Load kohya-layout SPM files (``SPMNetwork.save`` / the official ``save_weights``) onto ``unet``; the
        concept strings come from each file's ``prompts`` metadata."""
        states, concepts = [], []
        for path in paths:
            state, meta = load_spm_file(path)
            states.append(state)
            concepts.append(spm_prompts(meta))
        return cls(unet, states, concepts, mode=mode, names=[str(p) for p in paths])

    @property
    def num_spms(self) -> int:
        return len(self.concepts)

    @property
    def unet(self) -> nn.Module:
        """The UNet the hooks are attached to."""
        return self._unet[0]

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        """Register the forward hooks (on entering :meth:`applied`, unless :meth:`remove` was called)."""
        if self._handles or self._removed:
            return
        modules = dict(self.unet.named_modules())
        for key in self.stacks:
            self._handles.append(modules[self._paths[key]].register_forward_hook(self._hook(key)))

    def _detach(self) -> None:
        remove_hooks(self._handles)

    @property
    def hooked(self) -> bool:
        """Whether the per-layer hooks are attached now (inside :meth:`applied`, when the gammas are not merged)."""
        return bool(self._handles)

    def remove(self) -> None:
        """Detach the hooks for good: the UNet's original forward, also inside :meth:`applied`."""
        self._removed = True
        self._detach()

    def _stack_on(self, key: str, device: torch.device) -> None:
        """Move the stack to ``device`` if the UNet was moved after the SPMs were loaded."""
        if self.stacks[key].down.device != device:
            self.stacks[key].to(device)

    def _prepared(self, key: str, n: int, device: torch.device) -> tuple:
        """The stack's per-gamma tensors for a UNet batch of ``n`` rows (cached until :meth:`applied` exits)."""
        prep = self._cache.get((key, n))
        if prep is None:
            self._stack_on(key, device)
            gammas = self._gammas
            if n != gammas.shape[0]:
                if n % gammas.shape[0]:
                    raise ValueError(f"UNet batch of {n} rows is not a multiple of the {gammas.shape[0]} gamma rows")
                gammas = gammas.repeat(n // gammas.shape[0], 1)  # CFG's [uncond; cond] halves share gamma (official)
            prep = self.stacks[key].prepare(gammas, self.mode == "official", self._uniform)
            self._cache[(key, n)] = prep
        return prep

    def _hook(self, key: str):
        stack = self.stacks[key]

        def add_branches(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            x = inputs[0]
            return stack.add_branches(x, output, self._prepared(key, x.shape[0], x.device))
        return add_branches

    @contextlib.contextmanager
    def applied(self, gammas: torch.Tensor | Sequence[float]) -> Iterator[SPMComposition]:
        """Switch the SPMs on with ``gammas`` [B, C] (one row per sample) or [C] (all samples); a UNet batch of
        k*B rows (e.g. CFG's [uncond; cond]) uses ``gammas.repeat(k, 1)``.

        When every row is the same (one prompt, or prompts with equal gammas) and ``merge_uniform`` is on, the
        deltas are merged into the adapted weights for the duration (:meth:`merged_weights`, swapped in and back,
        nothing modified): the UNet then runs its plain forward at zero per-step cost, for one extra copy of the
        adapted layers' weights. Otherwise the per-layer hooks add the batched low-rank branches.
        """
        gammas = torch.as_tensor(gammas, dtype=torch.float32)
        if gammas.ndim == 1:
            gammas = gammas.unsqueeze(0)
        if gammas.ndim != 2 or gammas.shape[1] != self.num_spms:
            raise ValueError(f"gammas of shape {tuple(gammas.shape)}: expected [B, {self.num_spms}] or "
                             f"[{self.num_spms}] (one per SPM)")
        if self._gammas is not None:
            raise RuntimeError("SPMComposition.applied() is already active; leave it before entering it again")
        uniform = bool((gammas == gammas[:1]).all())
        self._gammas, self._uniform, self._cache = gammas, uniform, {}
        try:
            if uniform and self.merge_uniform and not self._removed:
                with swapped_parameters(self.unet, self.merged_weights(gammas[0])):
                    yield self
            else:
                self._attach()
                yield self
        finally:
            self._gammas, self._cache = None, {}
            self._detach()

    # ------------------------------------------------------------------ merging
    @torch.no_grad()
    def merged_weights(self, gammas: torch.Tensor | Sequence[float]) -> dict[str, torch.Tensor]:
        """``{unet param name: W + Delta W(gammas)}`` for one gamma set [C], for ``swapped_parameters``
        (outside :meth:`applied`, where no hooks are attached): zero per-step overhead."""
        gammas = torch.as_tensor(gammas, dtype=torch.float32).flatten()
        if gammas.numel() != self.num_spms:
            raise ValueError(f"merged_weights needs one gamma set of {self.num_spms} values, got {gammas.numel()}")
        modules = dict(self.unet.named_modules())
        out = {}
        for key, stack in self.stacks.items():
            path = self._paths[key]
            weight = modules[path].weight
            self._stack_on(key, weight.device)
            delta = stack.delta_weight(gammas, self.mode == "official", weight.shape)
            out[f"{path}.weight"] = weight + delta.to(weight.dtype)
        return out


def _spm_shapes(layer: nn.Module, rank: int) -> tuple[tuple, tuple]:
    """(down, up) weight shapes of a rank-``rank`` SPM branch on ``layer``."""
    if isinstance(layer, nn.Conv2d):
        return (rank, layer.in_channels, *layer.kernel_size), (layer.out_channels, rank, 1, 1)
    return (rank, layer.in_features), (layer.out_features, rank)


def check_state(state: dict[str, torch.Tensor], layers: dict[str, tuple[str, nn.Module]], source: str,
                unet: nn.Module | None = None) -> None:
    """Strict layout check of one SPM against a UNet's adapted layers: the first missing key, shape mismatch or
    unexpected key is named, with both shapes (transfer to an incompatible model); with ``unet``, an SPM of another
    family (SD v1.x / v2.x / SDXL) is named as such first."""
    if unet is not None:
        rank = next((v.shape[0] for k, v in state.items() if k.endswith(".lora_down.weight")), 1)
        own = {}
        for key, (_, layer) in layers.items():
            own[f"{key}.lora_down.weight"], own[f"{key}.lora_up.weight"] = _spm_shapes(layer, rank)
        mismatch = family_mismatch(state, own, unet, source)
        if mismatch:
            raise ValueError(mismatch)
    for key, (_, layer) in layers.items():
        down, up = f"{key}.lora_down.weight", f"{key}.lora_up.weight"
        for k in (down, up):
            if k not in state:
                raise ValueError(f"{source}: key {k!r} is missing from the file; the SPM was trained on a UNet with "
                                 f"other module names (this UNet's layer {key} has weight "
                                 f"{tuple(layer.weight.shape)})")
        want_down, want_up = _spm_shapes(layer, state[down].shape[0])
        for k, want in ((down, want_down), (up, want_up)):
            if tuple(state[k].shape) != want:
                raise ValueError(f"{source}: key {k!r} has shape {tuple(state[k].shape)} in the file but this UNet "
                                 f"needs {want}; the SPM was trained on another base model (e.g. SD v1 vs v2/XL), "
                                 f"so it cannot transfer to this one")
    known = {f"{key}.{suffix}" for key in layers for suffix in ("lora_down.weight", "lora_up.weight", "alpha")}
    for k in sorted(state):
        if k not in known:
            raise ValueError(f"{source}: unexpected key {k!r} (shape {tuple(state[k].shape)}); this UNet has no such "
                             f"adapted layer (expected only lora_unet_* keys of its Transformer2DModel layers)")

"""Why the toy model's phrases ("a red circle") escape an SPM that erases the bare word "circle" (NOTES.md, "Why
phrases escape erasure").

    python -m projects.spm.toy.diagnose [--spm logs/spm/<run>/<name>_last.safetensors] [--base projects/spm/toy_model]

Measured on a toy base model folder, all at matched noise (the same x_t for every prompt: toy renders of every
shape, noised to a few timesteps):

1. text encoder: cosine with bare "circle" of what the UNet's cross-attention reads (the whole padded
   ``last_hidden_state``, flattened), of the pooled (first EOS) output, of the padding positions' mean, and of the
   concept token alone, position-aligned (the "circle" token of the phrase vs the one of "circle"; for a prompt
   without "circle", its last word token), both its output and its input embedding (token + position);
2. cross-attention: the attention mass each token group (BOS, each word, EOS, the padding) gets, averaged over heads,
   pixels, the UNet's cross-attention layers, timesteps and x_t;
3. the UNet's guidance directions: cos(eps(p) - eps(""), eps("circle") - eps("")) and the norm ratio;
4. how prompt-blind the membrane's layers are: the relative change of each adapted layer's input between "circle" and
   "" (a rank-1 branch on a layer whose input barely depends on the prompt moves the CFG unconditional row "" as
   much as "circle");
5. with ``--spm``: each prompt's epsilon drift with the membrane on vs off, relative to eps("circle") - eps(""), its
   signed projection on that direction, and the CFG-guided drift split into its unconditional and conditional parts.

Prints a markdown report and writes it, with the raw numbers, to ``logs/spm/diagnose.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor

from projects.spm.diffusion.model import DiffusionModel, swapped_parameters
from projects.spm.network import SPMNetwork, adapted_layers
from projects.spm.toy.scenes import TOY_COLORS, TOY_SHAPES, render_toy_scenes
from projects.spm.toy.toy_base import DEFAULT_DIR as TOY_MODEL
from shared.cli import logs_dir

WORD = "circle"
PHRASES = ("a red circle", "a blue circle", "a yellow circle")
OTHERS = ("a red square", "a blue star", "a purple ring", "square", "star", "red", "")
ATTENTION_PROMPTS = ("circle", *PHRASES, "a red square", "")
CONTRAST = "square"  # the circle-vs-square difference, bare and inside each "a <colour> ..." phrase
TIMESTEPS = (900, 600, 300, 100)
GUIDANCE = 5.0  # the toy evaluation's CFG scale


# ------------------------------------------------------------------ tokens
def token_groups(tokenizer, prompt: str) -> dict[str, list[int]]:
    """Positions of the padded prompt's tokens by group: ``BOS``, each word (its BPE pieces), ``EOS`` (the first
    one, CLIP's pooled position) and ``padding`` (the rest). A word that occurs twice gets both positions."""
    ids = tokenizer(prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length).input_ids
    groups: dict[str, list[int]] = {"BOS": [0]}
    pos = 1
    for word in prompt.split():
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        if ids[pos:pos + len(pieces)] != pieces:
            raise ValueError(f"{word!r} in {prompt!r} does not tokenize on its own as inside the prompt")
        groups.setdefault(word, []).extend(range(pos, pos + len(pieces)))
        pos += len(pieces)
    groups["EOS"] = [pos] if pos < len(ids) else []
    groups["padding"] = list(range(pos + 1, len(ids)))
    return groups


def concept_position(tokenizer, prompt: str, word: str = WORD) -> int:
    """Position of ``word``'s (last) token in the padded prompt; without it, the prompt's last word token (BOS
    for "")."""
    groups = token_groups(tokenizer, prompt)
    if word in groups:
        return groups[word][-1]
    words = [g for g in groups if g not in ("BOS", "EOS", "padding")]
    return groups[words[-1]][-1] if words else 0


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def text_encoder_report(model: DiffusionModel, prompts: list[str], reference: str = WORD) -> dict[str, dict]:
    """Per prompt: cosines with ``reference`` of the full sequence, pooled output, padding mean, and the concept
    token's output and input embedding (position-aligned via :func:`concept_position`)."""
    tok, enc = model.tokenizer, model.text_encoder
    everything = [reference, "", *prompts]
    ids = tok(everything, padding="max_length", truncation=True, max_length=tok.model_max_length,
              return_tensors="pt").input_ids
    with torch.inference_mode():
        out = enc(ids)
        inputs = getattr(enc, "text_model", enc).embeddings(input_ids=ids)  # transformers < 5 nests it
    hidden, pooled = out.last_hidden_state, out.pooler_output
    ref_pos = concept_position(tok, reference)
    ref_pad = token_groups(tok, reference)["padding"]
    rows = {}
    for i, p in enumerate(everything[2:], start=2):
        pos, pad = concept_position(tok, p), token_groups(tok, p)["padding"]
        rows[p] = {"sequence": cosine(hidden[i], hidden[0]), "sequence_vs_empty": cosine(hidden[i], hidden[1]),
                   "pooled": cosine(pooled[i], pooled[0]),
                   "padding_mean": cosine(hidden[i, pad].mean(0), hidden[0, ref_pad].mean(0)),
                   "concept_token": cosine(hidden[i, pos], hidden[0, ref_pos]),
                   "concept_token_input": cosine(inputs[i, pos], inputs[0, ref_pos]), "concept_position": pos}
    return rows


# ------------------------------------------------------------------ cross-attention mass
class AttentionRecorder:
    """Context manager: every cross-attention processor of ``unet`` is replaced by diffusers' ``AttnProcessor``
    (the explicit-softmax one, same math as the SDPA default) that also records, per call, the attention
    probabilities averaged over heads and pixels: ``records[layer name]`` is a list of ``[B, L]`` tensors, and
    ``entropy[layer name]`` a list of ``[B]`` mean entropies of the per-pixel, per-head distributions divided by
    log L (1 = uniform over the tokens). The original processors are put back on exit."""

    def __init__(self, unet) -> None:
        self.unet = unet
        self.records: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.entropy: dict[str, list[torch.Tensor]] = defaultdict(list)

    def __enter__(self) -> AttentionRecorder:
        self.original = dict(self.unet.attn_processors)
        procs = {}
        for name, proc in self.original.items():
            module = self.unet.get_submodule(name.removesuffix(".processor"))
            procs[name] = _Recording(name, self.records, self.entropy) if module.is_cross_attention else proc
        self.unet.set_attn_processor(procs)
        return self

    def __exit__(self, *exc) -> None:
        self.unet.set_attn_processor(self.original)

    def token_mass(self) -> torch.Tensor:
        """``[layers, B, L]``: each layer's mass per token, averaged over its calls (e.g. timesteps)."""
        return torch.stack([torch.stack(calls).mean(0) for calls in self.records.values()])

    def normalized_entropy(self) -> torch.Tensor:
        """``[layers, B]``: each layer's mean normalized entropy, averaged over its calls."""
        return torch.stack([torch.stack(calls).mean(0) for calls in self.entropy.values()])


class _Recording(AttnProcessor):
    def __init__(self, name: str, records: dict[str, list[torch.Tensor]],
                 entropy: dict[str, list[torch.Tensor]]) -> None:
        super().__init__()
        self.name, self.records, self.entropy = name, records, entropy

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        scores = attn.get_attention_scores

        def recorded(query, key, mask=None):
            probs = scores(query, key, mask)  # [B * heads, pixels, L], batch-major
            per_head = probs.unflatten(0, (-1, attn.heads)).float()
            self.records[self.name].append(per_head.mean(dim=(1, 2)))
            h = -(per_head * per_head.clamp_min(1e-12).log()).sum(-1) / math.log(per_head.shape[-1])
            self.entropy[self.name].append(h.mean(dim=(1, 2)))
            return probs

        attn.get_attention_scores = recorded  # an instance attribute shadows the method for this call only
        try:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        finally:
            del attn.get_attention_scores


def group_mass(mass: torch.Tensor, groups: dict[str, list[int]]) -> dict[str, float]:
    """Sum a ``[L]`` attention-mass vector over each token group's positions."""
    return {g: mass[pos].sum().item() for g, pos in groups.items()}


# ------------------------------------------------------------------ matched noise
def matched_noise(model: DiffusionModel, per_timestep: int = 12, timesteps=TIMESTEPS, seed: int = 0):
    """x_t shared by every prompt: ``per_timestep`` toy renders (shapes and colours in turn) noised to each t."""
    scenes = render_toy_scenes(per_timestep, seed=seed)
    x0 = scenes["images"].float() / 127.5 - 1
    g = torch.Generator().manual_seed(seed)
    xs, ts = [], []
    for t in timesteps:
        a = model.ddim.alphas_cumprod[t]
        xs.append(a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g))
        ts.append(torch.full((per_timestep,), t))
    return torch.cat(xs), torch.cat(ts)


def eps_per_prompt(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, prompts: list[str],
                   params: dict | None = None) -> torch.Tensor:
    """``[P, N, C, H, W]``: eps of every prompt at every (x_t, t), one batched UNet call."""
    cond = model.encode_prompts(prompts)
    n = x.shape[0]
    with torch.inference_mode(), swapped_parameters(model.unet, params):
        eps = model.unet(x.repeat(len(prompts), 1, 1, 1), t.repeat(len(prompts)),
                         encoder_hidden_states=cond.repeat_interleave(n, 0)).sample
    return eps.unflatten(0, (len(prompts), n))


def per_sample_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def norm_ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-12)


def projection(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per sample ``<a, d> / |d|^2``: -1 means ``a`` undoes ``d`` exactly."""
    return (a.flatten(1) * d.flatten(1)).sum(1) / d.flatten(1).pow(2).sum(1).clamp_min(1e-12)


def contrast_cos(vectors: dict[str, torch.Tensor], a: tuple[str, str], b: tuple[str, str]) -> float:
    """Mean over samples of cos(v[a0] - v[a1], v[b0] - v[b1]); ``vectors`` hold ``[N, ...]`` per prompt."""
    return per_sample_cos(vectors[a[0]] - vectors[a[1]], vectors[b[0]] - vectors[b[1]]).mean().item()


def guidance_directions(eps: torch.Tensor, prompts: list[str]) -> dict[str, dict]:
    """cos and norm ratio of eps(p) - eps("") with eps("circle") - eps(""), mean over samples."""
    e = dict(zip(prompts, eps, strict=True))
    d = e[WORD] - e[""]
    return {p: {"cos": per_sample_cos(e[p] - e[""], d).mean().item(),
                "norm_ratio": norm_ratio(e[p] - e[""], d).mean().item()} for p in prompts if p}


def guidance_strength(eps: dict[str, torch.Tensor], t: torch.Tensor, prompts: list[str]) -> dict[str, dict[int, float]]:
    """Per prompt and timestep: mean squared element of eps(p) - eps("") (the Eq. 5 erasing signal's size for the
    target, which sets how large lambda may be before the anchor term pins the membrane)."""
    return {p: {int(ti): (eps[p] - eps[""])[t == ti].pow(2).mean().item() for ti in t.unique(sorted=True)}
            for p in prompts}


# ------------------------------------------------------------------ how prompt-blind the adapted layers are
def layer_input_sensitivity(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor,
                            pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """Per adapted layer: ``|in(a) - in(b)| / |in(b)|`` for each prompt pair (mean over samples) and its size."""
    prompts = sorted({p for pair in pairs for p in pair})
    index = {p: i for i, p in enumerate(prompts)}
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, (_, layer) in adapted_layers(model.unet).items():
        def keep(module, args, name=name):
            inputs[name] = args[0].detach()
        handles.append(layer.register_forward_pre_hook(keep))
    try:
        eps_per_prompt(model, x, t, prompts)
    finally:
        for h in handles:
            h.remove()
    out = {}
    layers = adapted_layers(model.unet)
    for name, value in inputs.items():
        v = value.unflatten(0, (len(prompts), x.shape[0])).flatten(2)
        row = {"params": layers[name][1].weight.numel(), "path": layers[name][0]}
        for a, b in pairs:
            row[f"{a}|{b}"] = (norm_ratio(v[index[a]] - v[index[b]], v[index[b]])).mean().item()
        out[name] = row
    return out


def blind_share(sensitivity: dict[str, dict], pair: str, below: float) -> float:
    """Share of adapted weights whose input changes by less than ``below`` (relative) across ``pair``."""
    total = sum(r["params"] for r in sensitivity.values())
    return sum(r["params"] for r in sensitivity.values() if r[pair] < below) / total


# ------------------------------------------------------------------ SPM drift
def spm_drift(model: DiffusionModel, spm_path: Path, x: torch.Tensor, t: torch.Tensor, prompts: list[str],
              guidance: float = GUIDANCE) -> dict[str, dict]:
    """Membrane on (gamma 1 on both CFG rows, as the toy evaluation applies it) vs off, at matched x_t.

    Per prompt p, with d = eps_off("circle") - eps_off("") and Delta(p) = eps_on(p) - eps_off(p):
    ``drift`` = |Delta(p)| / |d|; ``along_circle`` = <Delta(p), d> / |d|^2 (-1: the full Eq. 5 target for "circle");
    ``guided_along_own`` = the CFG-guided change (1 - w) Delta("") + w Delta(p) projected on p's own guidance
    direction g_p = eps_off(p) - eps_off("") (negative erases p, positive strengthens it), split into its
    ``uncond_part`` and ``cond_part``."""
    net = SPMNetwork.from_file(model.unet, spm_path, multiplier=0.0)
    try:
        off = dict(zip(prompts, eps_per_prompt(model, x, t, prompts), strict=True))
        on = dict(zip(prompts, eps_per_prompt(model, x, t, prompts, net.merged_weights(model.unet, 1.0)),
                      strict=True))
    finally:
        net.remove()
    d = off[WORD] - off[""]
    delta = {p: on[p] - off[p] for p in prompts}
    rows = {}
    for p in prompts:
        row = {"drift": norm_ratio(delta[p], d).mean().item(), "along_circle": projection(delta[p], d).mean().item()}
        if p:
            g = off[p] - off[""]
            uncond, cond = projection((1 - guidance) * delta[""], g), projection(guidance * delta[p], g)
            row.update(guided_along_own=(uncond + cond).mean().item(), uncond_part=uncond.mean().item(),
                       cond_part=cond.mean().item())
        rows[p] = row
    return rows


def find_spm_files(root: Path | None = None) -> list[Path]:
    root = logs_dir() / "spm" if root is None else root
    return sorted(root.glob("**/*_last.safetensors")) if root.is_dir() else []


# ------------------------------------------------------------------ report
def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def diagnose(base: Path = TOY_MODEL, spm: Path | None = None, per_timestep: int = 12) -> dict:
    torch.manual_seed(0)
    model = DiffusionModel.from_folder(base)
    tok = model.tokenizer
    lines, result = [], {"base": str(base), "timesteps": list(TIMESTEPS), "x_t_per_timestep": per_timestep}

    text = text_encoder_report(model, [WORD, *PHRASES, *OTHERS])
    result["text_encoder"] = text
    lines += ["### 1. Text encoder: cosine with bare \"circle\"", "",
              "| prompt | full sequence (UNet reads) | same vs \"\" | pooled (EOS) | padding mean | concept token "
              "output | concept token input |", "|---|---|---|---|---|---|---|"]
    for p, r in text.items():
        lines.append(f"| {p!r} | {fmt(r['sequence'])} | {fmt(r['sequence_vs_empty'])} | {fmt(r['pooled'])} | "
                     f"{fmt(r['padding_mean'])} | {fmt(r['concept_token'])} | {fmt(r['concept_token_input'])} |")

    x, t = matched_noise(model, per_timestep)
    prompts = list(ATTENTION_PROMPTS)
    cond = model.encode_prompts(prompts)
    with AttentionRecorder(model.unet) as rec, torch.inference_mode():
        for ti in TIMESTEPS:
            xs = x[t == ti]
            model.unet(xs.repeat(len(prompts), 1, 1, 1), torch.full((len(prompts) * len(xs),), ti),
                       encoder_hidden_states=cond.repeat_interleave(len(xs), 0))
    mass = rec.token_mass().unflatten(1, (len(prompts), -1)).mean(2)  # [layers, prompts, L]
    entropy = rec.normalized_entropy().unflatten(1, (len(prompts), -1)).mean(2)  # [layers, prompts]
    attention = {}
    for i, p in enumerate(prompts):
        groups = token_groups(tok, p)
        attention[p] = {"mean": group_mass(mass[:, i].mean(0), groups),
                        "entropy": entropy[:, i].mean().item(), "entropy_min_layer": entropy[:, i].min().item(),
                        "per_layer": {name: group_mass(mass[k, i], groups) for k, name in enumerate(rec.records)}}
    result["attention"] = attention
    lines += ["", f"### 2. Cross-attention mass per token group ({mass.shape[0]} layers, heads, pixels, t in "
              f"{list(TIMESTEPS)}, {per_timestep} x_t each)", "",
              f"Uniform attention would give each of the {tok.model_max_length} tokens "
              f"{1 / tok.model_max_length:.3f}; entropy / log L = 1 is uniform per pixel.", "",
              "| prompt | BOS | a | colour | shape | EOS | padding | entropy / log L (min layer) |",
              "|---|---|---|---|---|---|---|---|"]
    for p, r in attention.items():
        m = r["mean"]
        colour = next((m[w] for w in m if w in TOY_COLORS), None)
        shape = next((m[w] for w in m if w in TOY_SHAPES), None)
        lines.append(f"| {p!r} | {fmt(m['BOS'])} | {fmt(m.get('a'))} | {fmt(colour)} | {fmt(shape)} | "
                     f"{fmt(m['EOS'])} | {fmt(m['padding'])} ({len(token_groups(tok, p)['padding'])} pos) | "
                     f"{fmt(r['entropy'], 3)} ({fmt(r['entropy_min_layer'], 3)}) |")

    squares = [p.replace(WORD, CONTRAST) for p in PHRASES]
    eps_prompts = ["", WORD, *PHRASES, *squares, "a blue star", CONTRAST, "star", "red"]
    eps = eps_per_prompt(model, x, t, eps_prompts)
    directions = guidance_directions(eps, eps_prompts)
    result["guidance_directions"] = directions
    lines += ["", "### 3. UNet guidance direction eps(p) - eps(\"\") vs eps(\"circle\") - eps(\"\")", "",
              "| prompt | cos | norm ratio |", "|---|---|---|"]
    lines += [f"| {p!r} | {fmt(r['cos'])} | {fmt(r['norm_ratio'])} |" for p, r in directions.items()]
    by_prompt = dict(zip(eps_prompts, eps, strict=True))
    strength = guidance_strength(by_prompt, t, [WORD, PHRASES[0]])
    result["guidance_strength"] = strength
    lines += ["", "Mean squared element of eps(p) - eps(\"\") by t: " + "; ".join(
        f"{p!r} " + ", ".join(f"t={ti}: {v:.1e}" for ti, v in sorted(r.items(), reverse=True))
        for p, r in strength.items())]

    # circle-vs-square, bare vs inside each phrase, and phrase vs the first phrase: text and UNet
    cond = model.encode_prompts(eps_prompts)
    seq = {p: cond[i:i + 1] for i, p in enumerate(eps_prompts)}
    token = {p: cond[i:i + 1, concept_position(tok, p, WORD if WORD in p else CONTRAST)]
             for i, p in enumerate(eps_prompts) if WORD in p or CONTRAST in p}
    bare, first = (WORD, CONTRAST), (PHRASES[0], squares[0])
    contrast = {}
    for phrase, square in zip(PHRASES, squares, strict=True):
        pair = (phrase, square)
        contrast[phrase] = {f"{space}_vs_{ref_name}": contrast_cos(vectors, pair, ref)
                            for space, vectors in (("text_sequence", seq), ("text_token", token), ("eps", by_prompt))
                            for ref_name, ref in (("bare", bare), ("first_phrase", first))}
    result["contrast"] = contrast
    lines += ["", f"### 3b. Is \"{WORD}\" the same inside a phrase? cos of the {WORD}-minus-{CONTRAST} difference "
              f"in a phrase with the bare {WORD}-minus-{CONTRAST} difference (and with the one in {PHRASES[0]!r})", "",
              "| phrase | text sequence vs bare | vs 'a red' | shape token vs bare | vs 'a red' | eps vs bare | "
              "vs 'a red' |", "|---|---|---|---|---|---|---|"]
    for phrase, r in contrast.items():
        lines.append(f"| {phrase!r} | " + " | ".join(fmt(r[f"{s}_vs_{ref}"]) for s in ("text_sequence", "text_token",
                                                                                       "eps")
                                                     for ref in ("bare", "first_phrase")) + " |")

    pairs = [(WORD, ""), (PHRASES[0], WORD), (PHRASES[0], "")]
    sens = layer_input_sensitivity(model, x, t, pairs)
    kinds = {"text side (attn2.to_k/to_v)": lambda n: "attn2_to_k" in n or "attn2_to_v" in n}
    kinds["image side (all other adapted layers)"] = lambda n: not kinds["text side (attn2.to_k/to_v)"](n)
    result["layer_input_sensitivity"] = sens
    lines += ["", "### 4. Adapted layers: relative input change |in(a) - in(b)| / |in(b)| (param-weighted mean), "
              "share of adapted weights whose input moves < 5 %", "",
              "| layers | params | " + " | ".join(f"{a!r} vs {b!r}" for a, b in pairs) + " | share < 5 % ("
              f"{WORD!r} vs '') |", "|---|---|" + "---|" * len(pairs) + "---|"]
    for kind, keep in kinds.items():
        rows = {n: r for n, r in sens.items() if keep(n)}
        total = sum(r["params"] for r in rows.values())
        means = [sum(r[f"{a}|{b}"] * r["params"] for r in rows.values()) / total for a, b in pairs]
        lines.append(f"| {kind} | {total} | " + " | ".join(fmt(v, 3) for v in means) +
                     f" | {fmt(blind_share(rows, f'{WORD}|', 0.05))} |")
    result["blind_share_5pct"] = blind_share(sens, f"{WORD}|", 0.05)

    spm_files = [spm] if spm is not None else []
    result["spm_files_found"] = [str(p) for p in find_spm_files()]
    lines += ["", "### 5. SPM drift (membrane on, gamma 1 on both CFG rows, vs off)", ""]
    if not spm_files:
        found = result["spm_files_found"]
        lines.append("No --spm given; " + (f"found {len(found)} under {logs_dir() / 'spm'}: {found}" if found else
                                           f"no *_last.safetensors under {logs_dir() / 'spm'} (train one with "
                                           "`make train-spm`, then pass --spm)."))
    else:
        drift_prompts = ["", WORD, *PHRASES, "a red square"]
        drift = spm_drift(model, spm, x, t, drift_prompts)
        result["spm"], result["spm_drift"] = str(spm), drift
        lines += [f"SPM: `{spm}`; d = eps(\"circle\") - eps(\"\"), Delta = eps_on - eps_off, CFG w = {GUIDANCE:g}", "",
                  "| prompt | abs(Delta) / abs(d) | Delta along d | guided change along own direction | from uncond "
                  "row (1-w) Delta(\"\") | from cond row w Delta(p) |", "|---|---|---|---|---|---|"]
        for p, r in drift.items():
            lines.append(f"| {p!r} | {fmt(r['drift'])} | {fmt(r['along_circle'])} | "
                         f"{fmt(r.get('guided_along_own'))} | {fmt(r.get('uncond_part'))} | "
                         f"{fmt(r.get('cond_part'))} |")
    result["report"] = "\n".join(lines)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=TOY_MODEL, help="toy base model folder")
    p.add_argument("--spm", type=Path, help="a toy SPM file (kohya safetensors) for the drift measure")
    p.add_argument("--per-timestep", type=int, default=12, help="x_t (toy renders) per timestep")
    p.add_argument("--out", type=Path, default=None, help="default: logs/spm/diagnose.json")
    args = p.parse_args(argv)
    result = diagnose(args.base, args.spm, args.per_timestep)
    print(result["report"])
    args.out = args.out or logs_dir() / "spm" / "diagnose.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

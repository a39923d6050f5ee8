"""Prompt-to-Prompt controllers: what each attention layer computes at each denoising step.

:class:`s2s.edit.processors.P2PAttnProcessor` computes queries, keys and values with the layer's own
weights and asks its controller to ``attend``. The step index is set from the pipeline's
``callback_on_step_end`` (``step_end``), never counted from calls. Batches hold the source and the target
prompt, ``[uncond_src, uncond_tgt, cond_src, cond_tgt]`` with classifier-free guidance and
``[cond_src, cond_tgt]`` without; as in P2P only the conditional rows are edited.

No edit needs attention probabilities. P2P's self-attention replacement gives the target
``softmax(Q_s K_s^T) V_t``: scaled-dot-product attention (SDPA) with the source's queries and keys. Every
cross-attention edit (word swap, refinement, reweighting, each blended with the target's own map by a
per-token time window) is linear in the maps, ``P_src A + P_tgt diag(d)``, so its output is
``SDPA(Q_s, K_s, A V_t) + SDPA(Q_t, K_t, d V_t)``: one batched SDPA call with changed rows. Explicit
softmax maps are computed only for the stored rows of cross-attention layers (attention sheet, local
blend), which is cheap: 77 keys instead of thousands of pixels.
"""

from __future__ import annotations

import abc
import logging
import math

import torch
import torch.nn.functional as F

from s2s.config import schema_defaults
from s2s.edit.seq_aligner import (
    EditSpecError,
    cross_replace_alphas,
    equalizer,
    refinement_mapper,
    replacement_mapper,
    step_window,
    word_positions,
)

log = logging.getLogger(__name__)

# Maps are aggregated at latent_size / MAP_DOWNSCALE (the nearest size a layer has): P2P's 16x16 maps of
# SD's 64x64 latent, where the paper found cross-attention most tied to objects.
MAP_DOWNSCALE = 4
# P2P replaces self-attention only in layers with at most 16x16 pixels (SD 1.x at 512 px): finer layers
# carry texture, and replacing them copies the source's appearance into the edit.
SELF_REPLACE_MAX_RES = 16

EDITS = ("replace", "refine", "reweight", "subject")
SPEC_KEYS = {
    "edit",
    "cross_replace_steps",
    "self_replace_steps",
    "self_replace_max_res",
    "equalizer",
    "blend_words",
    "keep_words",
    "threshold",
    "keep_threshold",
    "start_blend",
}
_EDIT_DEFAULTS = schema_defaults("edits")
# P2P's defaults for a spec that leaves a key out (the edit stage always gives all four: its EditConfig):
# the edits.* defaults of config/schema.yaml, the one place they are written.
DEFAULT_SPEC = {
    "cross_replace_steps": _EDIT_DEFAULTS["cross_replace_steps"],
    "self_replace_steps": _EDIT_DEFAULTS["self_replace_steps"],
    "threshold": _EDIT_DEFAULTS["blend_threshold"],
    "start_blend": _EDIT_DEFAULTS["start_blend"],
}


def map_hw(n_tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Height and width of an attention layer's map, from its token count and the latent's shape."""
    h, w = latent_hw
    factor = round(math.sqrt(h * w / n_tokens))
    hw = (math.ceil(h / factor), math.ceil(w / factor))
    if hw[0] * hw[1] != n_tokens:
        raise ValueError(f"attention layer with {n_tokens} tokens does not tile a {h}x{w} latent")
    return hw


class AttentionStore:
    """Plain attention that keeps the cross-attention maps of chosen prompts, per layer and step.

    ``step_maps`` holds the current step's maps, ``total_maps`` their sum over finished steps; both are
    keyed by layer name and hold ``[stored prompts, heads, pixels, tokens]``. After the first step only
    the layers of the aggregation size (``latent_size / downscale``) keep storing: the others are never
    aggregated, and at SD's 64x64 layers explicit maps would cost more than the attention itself.
    """

    num_prompts = 2

    def __init__(self, store_prompts: tuple[int, ...] = (0,), downscale: int = MAP_DOWNSCALE):
        store_prompts = tuple(store_prompts)
        if store_prompts and store_prompts != tuple(
            range(store_prompts[0], store_prompts[0] + len(store_prompts))
        ):
            raise ValueError("store_prompts must be consecutive prompt indices, e.g. (0,) or (0, 1)")
        self.store_prompts = store_prompts
        self.downscale = downscale
        AttentionStore.reset(self, 0, (0, 0))

    def reset(self, num_steps: int, latent_hw: tuple[int, int]) -> None:
        """Start a new generation of ``num_steps`` steps on latents of spatial size ``latent_hw``."""
        self.num_steps = num_steps
        self.latent_hw = tuple(latent_hw)
        self.step = 0
        self.step_maps: dict[str, torch.Tensor] = {}
        self.total_maps: dict[str, torch.Tensor] = {}
        self.stored_steps = 0
        self.stored_layers: set[str] | None = None  # None: every cross-attention layer (first step)

    def step_end(self, step: int, latents: torch.Tensor) -> torch.Tensor:
        """Called after denoising step ``step``: fold its maps into the totals, move time on."""
        if self.stored_layers is None and self.step_maps:
            size = self._aggregation_size(self.step_maps)
            self.stored_layers = {
                n for n, m in self.step_maps.items() if map_hw(m.shape[2], self.latent_hw) == size
            }
        for name, maps in self.step_maps.items():
            if name not in self.stored_layers:
                continue
            if name in self.total_maps:
                self.total_maps[name] += maps
            else:
                self.total_maps[name] = maps
        if self.step_maps:
            self.stored_steps += 1
        self.step_maps = {}
        self.step = step + 1
        return latents

    def stores(self, layer: str) -> bool:
        """Whether ``layer``'s cross-attention maps are stored now. Like P2P's aggregation and local blend,
        only the down and up blocks are used (SD's mid block is coarser than any aggregation size)."""
        if not self.store_prompts:
            return False
        if self.stored_layers is None:
            return layer.startswith(("down", "up"))
        return layer in self.stored_layers

    def attend(self, layer: str, is_cross: bool, query, key, value, mask, scale: float) -> torch.Tensor:
        if is_cross and self.stores(layer):
            self._store(layer, query, key, mask, scale)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)

    def _store(self, layer: str, query, key, mask, scale: float) -> None:
        first = query.shape[0] - self.num_prompts + self.store_prompts[0]
        rows = slice(first, first + len(self.store_prompts))
        sim = torch.matmul(query[rows] * scale, key[rows].transpose(-1, -2))
        if sim.dtype != torch.float32:  # softmax of half-precision scores loses the small weights
            sim = sim.float()
        if mask is not None:
            sim = (
                sim.masked_fill(~mask[rows], float("-inf")) if mask.dtype == torch.bool else sim + mask[rows]
            )
        maps = sim.softmax(-1)
        if layer in self.step_maps:  # a layer called twice in one step (never in SD's UNet) adds up
            self.step_maps[layer] += maps
        else:
            self.step_maps[layer] = maps

    def _aggregation_size(self, maps: dict[str, torch.Tensor]) -> tuple[int, int]:
        sizes = {map_hw(m.shape[2], self.latent_hw) for m in maps.values()}
        wanted = self.latent_hw[0] / self.downscale
        return min(sizes, key=lambda hw: (abs(hw[0] - wanted), -hw[0]))

    def average_maps(self, prompt: int = 0) -> torch.Tensor:
        """Maps of one stored prompt averaged over heads, finished steps and the layers of the aggregation
        size: ``[H, W, tokens]``."""
        if not self.total_maps:
            raise RuntimeError("no cross-attention maps stored yet: run a generation with this controller")
        index = self.store_prompts.index(prompt)
        size = self._aggregation_size(self.total_maps)
        maps = [m[index] for m in self.total_maps.values() if map_hw(m.shape[2], self.latent_hw) == size]
        mean = torch.stack(maps).mean((0, 1)) / max(self.stored_steps, 1)
        return mean.reshape(*size, mean.shape[-1])


class LocalBlend:
    """Keep the target's latents equal to the source's outside the region of chosen words.

    The mask is the cross-attention of the words (source words in the source, target words in the target),
    max-pooled, scaled to the latent size, normalised to its maximum and thresholded; the union of both
    prompts' masks is kept. With ``keep`` positions (P2P's ``substruct_words``), the region where those
    words attend (not max-pooled, thresholded at ``keep_threshold``, union of both prompts) is taken out
    of the mask; with keep positions alone the mask is everything but that region, as a background edit
    needs: the object stays the source's. From ``start_step`` on, x_t = x_src + mask * (x_t - x_src) after
    every step.
    """

    def __init__(
        self,
        source_positions,
        target_positions,
        threshold: float,
        start_step: int = 0,
        keep: tuple[list[int], list[int]] | None = None,
        keep_threshold: float | None = None,
    ):
        self.positions = (list(source_positions), list(target_positions))
        self.threshold = threshold
        self.start_step = start_step
        self.keep = None if keep is None else (list(keep[0]), list(keep[1]))
        if not any(self.positions) and not (self.keep and any(self.keep)):
            raise ValueError("a local blend needs the token positions of blend words or of keep words")
        self.keep_threshold = threshold if keep_threshold is None else keep_threshold
        self.mask: torch.Tensor | None = None  # last mask used, [1, h, w] at latent size

    @staticmethod
    def _word_mask(store: AttentionStore, positions, size, threshold: float, pool: bool) -> torch.Tensor:
        """[1, h, w] bool: where either prompt's words (``positions``: one list per prompt) attend above
        ``threshold`` of their map's maximum."""
        word_maps = [store.average_maps(prompt)[..., pos].sum(-1) for prompt, pos in enumerate(positions)]
        maps = torch.stack(word_maps)[:, None]
        if pool:
            maps = F.max_pool2d(maps, kernel_size=3, stride=1, padding=1)
        maps = F.interpolate(maps, size=size)
        maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        selected = maps.gt(threshold)
        return selected[0] | selected[1]

    def __call__(self, store: AttentionStore, step: int, latents: torch.Tensor) -> torch.Tensor:
        if step < self.start_step:
            return latents
        size = latents.shape[-2:]
        if any(self.positions):
            mask = self._word_mask(store, self.positions, size, self.threshold, pool=True)
        else:
            mask = torch.ones((1, *size), dtype=torch.bool, device=latents.device)
        if self.keep is not None:
            mask = mask & ~self._word_mask(store, self.keep, size, self.keep_threshold, pool=False)
        self.mask = mask.to(latents.dtype)
        return latents[:1] + self.mask * (latents - latents[:1])


class EditController(AttentionStore, abc.ABC):
    """A P2P edit of the target prompt's attention, applied inside its time windows.

    Subclasses give the edit's token mixing in :meth:`cross_mix`; this class handles time (the
    ``cross_alphas`` window per step and target token, the self-attention window) and local blending.
    """

    def __init__(
        self,
        cross_alphas: torch.Tensor,
        self_window: tuple[int, int],
        local_blend: LocalBlend | None = None,
        self_replace_max_res: int = SELF_REPLACE_MAX_RES,
    ):
        super().__init__(store_prompts=(0, 1) if local_blend is not None else (0,))
        self.cross_alphas = cross_alphas
        self.self_window = self_window
        self.local_blend = local_blend
        self.self_replace_max_res = self_replace_max_res
        self._mix_cache: dict = {}
        self._index_cache: dict = {}

    @abc.abstractmethod
    def cross_mix(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The edit as ``(A, d)``: the target's new map is ``P_src @ A + P_tgt * d`` (``d`` None for 0).

        ``A[k, j]`` is how much of source token k's attention target token j takes.
        """

    def reset(self, num_steps: int, latent_hw: tuple[int, int]) -> None:
        super().reset(num_steps, latent_hw)
        if num_steps and self.cross_alphas.shape[0] != num_steps:
            raise ValueError(f"controller built for {self.cross_alphas.shape[0]} steps, run with {num_steps}")
        self._mix_cache = {}

    def step_end(self, step: int, latents: torch.Tensor) -> torch.Tensor:
        latents = super().step_end(step, latents)
        if self.local_blend is not None:
            latents = self.local_blend(self, step, latents)
        return latents

    def _step_mix(self, like: torch.Tensor):
        """``(A', d')`` of this step: the edit blended with the target's own map by the time window."""
        cache_key = (self.step, like.dtype, like.device)
        if cache_key not in self._mix_cache:
            alpha = self.cross_alphas[min(self.step, self.cross_alphas.shape[0] - 1)]
            if not alpha.any():
                mix = None
            else:
                a, d = self.cross_mix()
                d = torch.zeros_like(alpha) if d is None else d
                a, d = a * alpha[None, :], d * alpha + (1.0 - alpha)
                mix = (a.to(like), d.to(like)[:, None] if d.any() else None)
            self._mix_cache = {cache_key: mix}
        return self._mix_cache[cache_key]

    def _source_rows(self, batch: int, device) -> torch.Tensor:
        """Row index of the batch with the target's conditional row pointing at the source's."""
        if (batch, device) not in self._index_cache:
            index = torch.arange(batch, device=device)
            index[-1] = batch - 2
            self._index_cache[(batch, device)] = index
        return self._index_cache[(batch, device)]

    def attend(self, layer: str, is_cross: bool, query, key, value, mask, scale: float) -> torch.Tensor:
        if not is_cross:
            start, end = self.self_window
            if start <= self.step < end and query.shape[2] <= self.self_replace_max_res**2:
                rows = self._source_rows(query.shape[0], query.device)
                query, key = query.index_select(0, rows), key.index_select(0, rows)
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        if self.stores(layer):
            self._store(layer, query, key, mask, scale)
        mix = self._step_mix(value)
        if mix is None:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        a, d = mix
        batch = query.shape[0]
        rows = self._source_rows(batch, query.device)
        v_tgt = value[-1]
        heads, tokens, dim = v_tgt.shape
        # One [tokens, tokens] @ [tokens, heads * dim] product: broadcasting `a` over the heads is 4x slower.
        v_mixed = (
            (a @ v_tgt.transpose(0, 1).reshape(tokens, heads * dim)).view(tokens, heads, dim).transpose(0, 1)
        )
        q2, k2 = query.index_select(0, rows), key.index_select(0, rows)
        v2 = torch.cat([value[:-1], v_mixed[None]])
        m2 = None if mask is None else mask.index_select(0, rows)
        if d is not None:
            # The target's own share goes in as an extra batch row, so one SDPA call does both terms.
            q2, k2 = torch.cat([q2, query[-1:]]), torch.cat([k2, key[-1:]])
            v2 = torch.cat([v2, (d * v_tgt)[None]])
            m2 = None if mask is None else torch.cat([m2, mask[-1:]])
        out = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=m2)
        if d is not None:
            out = torch.cat([out[: batch - 1], out[batch - 1 : batch] + out[batch:]])
        return out


class Replace(EditController):
    """Word swap: target tokens take the attention of the source tokens they replace."""

    def __init__(self, mapper: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.mapper = mapper

    def cross_mix(self):
        return self.mapper, None


class Refine(EditController):
    """Added words: aligned target tokens take their source token's attention, new tokens keep their own."""

    def __init__(self, mapper: torch.Tensor, alphas: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.mapper, self.alphas = mapper, alphas

    def cross_mix(self):
        n = self.mapper.shape[0]
        a = torch.zeros(n, n)
        a[self.mapper, torch.arange(n)] = self.alphas
        return a, 1.0 - self.alphas


class Reweight(EditController):
    """Scale the attention to chosen target tokens (P2P's equalizer), after a previous edit if given."""

    def __init__(self, scale: torch.Tensor, prev: EditController | None = None, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.prev = scale, prev

    def cross_mix(self):
        if self.prev is None:
            return torch.diag(self.scale), None
        a, d = self.prev.cross_mix()
        return a * self.scale[None, :], None if d is None else d * self.scale


def _blend_words(
    spec_words, source: str, target: str, key: str = "blend_words"
) -> tuple[list[str], list[str]]:
    """``blend_words`` (or ``keep_words``): a list of words looked up in both prompts, or ``[source words,
    target words]``."""
    if spec_words and all(isinstance(w, list | tuple) for w in spec_words) and len(spec_words) == 2:
        return list(spec_words[0]), list(spec_words[1])
    if isinstance(spec_words, str):
        spec_words = [spec_words]
    if not isinstance(spec_words, list | tuple) or not all(isinstance(w, str) for w in spec_words):
        raise EditSpecError(
            f"{key} {spec_words!r}: give a list of words or [[source words], [target words]]", key
        )
    return list(spec_words), list(spec_words)


def _positions(tokenizer, source: str, target: str, key: str, words) -> tuple[list[int], list[int]]:
    src_words, tgt_words = _blend_words(words, source, target, key)
    src = [p for w in src_words for p in word_positions(tokenizer, source, w)]
    tgt = [p for w in tgt_words for p in word_positions(tokenizer, target, w)]
    if not src and not tgt:
        raise EditSpecError(f"{key} {words!r} occur in neither {source!r} nor {target!r}", key)
    return src, tgt


def _threshold(spec: dict, key: str, default: float) -> float:
    value = float(spec.get(key, default))
    if not 0.0 <= value < 1.0:
        raise EditSpecError(f"{key} {value} must be in [0, 1)", key)
    return value


def build_local_blend(tokenizer, source: str, target: str, spec: dict, num_steps: int) -> LocalBlend:
    """The local blend of a spec with ``blend_words``, ``keep_words`` or both."""
    src_pos, tgt_pos = [], []
    if spec.get("blend_words"):
        src_pos, tgt_pos = _positions(tokenizer, source, target, "blend_words", spec["blend_words"])
    keep = None
    if spec.get("keep_words"):
        keep = _positions(tokenizer, source, target, "keep_words", spec["keep_words"])
    threshold = _threshold(spec, "threshold", DEFAULT_SPEC["threshold"])
    keep_threshold = _threshold(spec, "keep_threshold", threshold)
    start = step_window(spec.get("start_blend", DEFAULT_SPEC["start_blend"]), num_steps, "start_blend")[1]
    return LocalBlend(src_pos, tgt_pos, threshold, start, keep=keep, keep_threshold=keep_threshold)


def build_controller(
    tokenizer, source: str, target: str, spec: dict, num_steps: int, max_len: int | None = None
) -> EditController:
    """The controller of an edit spec: ``edit`` (replace | refine | reweight | subject) and P2P's
    parameters (see ``SPEC_KEYS``; ``DEFAULT_SPEC`` for defaults). Prompts are as the tokenizer sees them
    (after textual-inversion token expansion). ``subject`` edits align like ``refine``; ``reweight``
    of two different prompts chains onto ``replace`` when they have as many words (whatever their token
    counts), else onto ``refine``."""
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise EditSpecError(
            f"unknown edit parameter(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}", "params"
        )
    edit = spec.get("edit", "replace")
    if edit not in EDITS:
        raise EditSpecError(f"unknown edit {edit!r}; use one of {', '.join(EDITS)}", "edit")
    max_len = max_len or tokenizer.model_max_length
    common = {
        "cross_alphas": cross_replace_alphas(
            tokenizer,
            target,
            num_steps,
            spec.get("cross_replace_steps", DEFAULT_SPEC["cross_replace_steps"]),
            max_len,
        ),
        "self_window": step_window(
            spec.get("self_replace_steps", DEFAULT_SPEC["self_replace_steps"]),
            num_steps,
            "self_replace_steps",
        ),
        "local_blend": build_local_blend(tokenizer, source, target, spec, num_steps)
        if spec.get("blend_words") or spec.get("keep_words")
        else None,
        "self_replace_max_res": int(spec.get("self_replace_max_res", SELF_REPLACE_MAX_RES)),
    }
    if edit == "replace":
        return Replace(replacement_mapper(tokenizer, source, target, max_len), **common)
    if edit in ("refine", "subject"):
        return Refine(*refinement_mapper(tokenizer, source, target, max_len), **common)
    if not spec.get("equalizer"):
        raise EditSpecError(
            "reweight edit needs 'equalizer': {word: scale, ...} (words of the target)", "equalizer"
        )
    prev = None
    if source != target:
        # P2P's word swap needs equal word counts only: multi-token words swap too (cat -> teddybear).
        same_words = len(source.split()) == len(target.split())
        prev = build_controller(
            tokenizer,
            source,
            target,
            {"edit": "replace" if same_words else "refine"},
            num_steps,
            max_len,
        )
    return Reweight(equalizer(tokenizer, target, spec["equalizer"], max_len), prev=prev, **common)

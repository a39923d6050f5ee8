"""Token alignment between a source and a target prompt, as pure functions of a tokenizer.

These are Prompt-to-Prompt's ``seq_aligner`` (Hertz et al.): which target token takes its attention
from which source token (word swap, refinement), which tokens a word occupies, the per-token reweighting
vector and the per-step, per-token cross-attention replacement schedule. They need only a tokenizer, so
they are tested without a model. Positions count the start token (position 0), like the text encoder's
output rows. Bad input raises :class:`EditSpecError` with the offending key in ``.key``.
"""

from __future__ import annotations

import torch

_PUNCTUATION = ".,;:!?\"'()"


class EditSpecError(ValueError):
    """A prompt or edit parameter that cannot be used; ``key`` names the parameter at fault."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def token_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` with start and end tokens, as the text encoder sees them (untruncated)."""
    return tokenizer(prompt, add_special_tokens=True, truncation=False).input_ids


def word_spans(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """Each whitespace-separated word of ``prompt`` with the token positions it occupies."""
    spans = []
    pos = 1  # after the start token
    for word in prompt.split():
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        spans.append((word, list(range(pos, pos + n))))
        pos += n
    # CLIP's BPE never merges across spaces, so words tokenised alone add up to the whole prompt; a
    # tokenizer that does merge would silently misplace every word after the first mismatch.
    if pos != len(token_ids(tokenizer, prompt)) - 1:
        raise EditSpecError(f"prompt {prompt!r}: words tokenise differently alone and in context", "prompt")
    return spans


def word_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Token positions of every occurrence of ``word`` in ``prompt`` (case and trailing punctuation ignored,
    as CLIP lower-cases and "field," should match "field")."""
    word = word.lower()
    return [
        p for w, span in word_spans(tokenizer, prompt) if w.lower().strip(_PUNCTUATION) == word for p in span
    ]


def _check_length(tokenizer, prompt: str, max_len: int) -> int:
    n = len(token_ids(tokenizer, prompt))
    if n > max_len:
        raise EditSpecError(
            f"prompt {prompt!r} has {n} tokens; the text encoder reads at most {max_len}: shorten it",
            "prompt",
        )
    return n


def replacement_mapper(tokenizer, source: str, target: str, max_len: int = 77) -> torch.Tensor:
    """Word-swap mapper ``M[max_len, max_len]``: target token j takes ``sum_k P_src[:, k] * M[k, j]``.

    P2P's word swap (``get_replacement_mapper_``): the prompts need the same number of *words*, not
    tokens. Unchanged words map token to token; a swapped word of as many tokens maps token to token too,
    otherwise each of its target tokens takes the source word's summed attention divided by the target
    word's token count (cat -> teddy + bear: half of "cat" each; two tokens -> one: their sum), so the
    word's total attention is kept. Tokens after the swaps (end token, padding) follow with the shift;
    P2P maps them ``j -> j`` there, which puts every word after a swap of unequal length onto the wrong
    source token ("a cat on the beach" -> "a teddybear on the beach": "on" would take "the").
    """
    _check_length(tokenizer, source, max_len)
    _check_length(tokenizer, target, max_len)
    src_words, tgt_words = word_spans(tokenizer, source), word_spans(tokenizer, target)
    if len(src_words) != len(tgt_words):
        raise EditSpecError(
            f"replace edit needs prompts with the same number of words, but {source!r} has "
            f"{len(src_words)} and {target!r} has {len(tgt_words)}; "
            "use edit 'refine' for prompts that add or remove words",
            "target_prompt",
        )
    mapper = torch.zeros(max_len, max_len)
    mapper[0, 0] = 1.0
    for (_, s_span), (_, t_span) in zip(src_words, tgt_words, strict=True):
        if len(s_span) == len(t_span):
            mapper[s_span, t_span] = 1.0
        else:
            for t in t_span:
                mapper[s_span, t] = 1.0 / len(t_span)
    # End token and padding, shifted by the difference in length; when the source is the longer prompt
    # the last target padding tokens take the source's last padding token (all padding embeds the end).
    i = src_words[-1][1][-1] + 1 if src_words else 1
    for j in range(tgt_words[-1][1][-1] + 1 if tgt_words else 1, max_len):
        mapper[min(i, max_len - 1), j] = 1.0
        i += 1
    return mapper


def global_align(x: list[int], y: list[int], gap: int = 0, match: int = 1, mismatch: int = -1) -> list[int]:
    """Needleman-Wunsch alignment of ``y`` onto ``x``: for each element of ``y`` its index in ``x`` or -1.

    Scores and tie-breaking (left, then up, then diagonal) are P2P's, so alignments match the paper's code.
    """
    rows, cols = len(x) + 1, len(y) + 1
    score = [[0] * cols for _ in range(rows)]
    trace = [[0] * cols for _ in range(rows)]
    for j in range(1, cols):
        score[0][j], trace[0][j] = j * gap, 1
    for i in range(1, rows):
        score[i][0], trace[i][0] = i * gap, 2
    for i in range(1, rows):
        for j in range(1, cols):
            left = score[i][j - 1] + gap
            up = score[i - 1][j] + gap
            diag = score[i - 1][j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = 1 if best == left else 2 if best == up else 3
    y_to_x: list[int] = []
    i, j = len(x), len(y)
    while i > 0 or j > 0:
        if trace[i][j] == 3:
            i, j = i - 1, j - 1
            y_to_x.append(i)
        elif trace[i][j] == 1:
            j -= 1
            y_to_x.append(-1)
        else:
            i -= 1
    return y_to_x[::-1]


def refinement_mapper(
    tokenizer, source: str, target: str, max_len: int = 77
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refinement alignment: ``mapper[j]`` is the source position of target token j, ``alphas[j]`` is 0
    for target tokens with no source counterpart (added words), 1 otherwise."""
    _check_length(tokenizer, source, max_len)
    _check_length(tokenizer, target, max_len)
    x, y = token_ids(tokenizer, source), token_ids(tokenizer, target)
    y_to_x = torch.tensor(global_align(x, y), dtype=torch.long)
    alphas = torch.ones(max_len)
    alphas[: len(y)] = y_to_x.ne(-1).float()
    mapper = torch.zeros(max_len, dtype=torch.long)
    mapper[: len(y)] = y_to_x.clamp(min=0)
    # P2P maps target padding j to source position j, which lands on a source word when the source is
    # longer; padding rows all embed the end token, so mapping them onto the source's padding is exact.
    mapper[len(y) :] = (len(x) + torch.arange(max_len - len(y))).clamp(max=max_len - 1)
    return mapper, alphas


def equalizer(tokenizer, prompt: str, values: dict[str, float], max_len: int = 77) -> torch.Tensor:
    """Per-token attention scale: ``values[word]`` at the tokens of each word, 1 elsewhere."""
    scale = torch.ones(max_len)
    for word, value in values.items():
        positions = word_positions(tokenizer, prompt, word)
        if not positions:
            raise EditSpecError(f"equalizer word {word!r} is not in the prompt {prompt!r}", "equalizer")
        scale[positions] = float(value)
    return scale


def _window(value, key: str) -> tuple[float, float]:
    """A replacement window as fractions of the steps: ``f`` means (0, f); ``[a, b]`` means (a, b)."""
    start, end = (0.0, value) if isinstance(value, int | float) else tuple(value)
    if not 0.0 <= float(start) <= float(end) <= 1.0:
        raise EditSpecError(f"{key} window {value!r} must be a fraction or [start, end] within 0..1", key)
    return float(start), float(end)


def step_window(value, num_steps: int, key: str) -> tuple[int, int]:
    """Window in step indices [start, end) of a fraction or ``[start, end]`` pair: ``int(start * n)``,
    ``int(end * n)``, as P2P computes ``self_replace_steps`` and ``start_blend``."""
    start, end = _window(value, key)
    return int(start * num_steps), int(end * num_steps)


def cross_step_window(value, num_steps: int, key: str = "cross_replace_steps") -> tuple[int, int]:
    """P2P's ``cross_replace_steps`` window: its time table has ``num_steps + 1`` rows, so the bounds are
    ``int(start * (n + 1))``, ``int(end * (n + 1))`` (f = 0.7 of 25 steps: steps 0..17, not 0..16), and a
    window ending at 1 covers every step."""
    start, end = _window(value, key)
    return min(int(start * (num_steps + 1)), num_steps), min(int(end * (num_steps + 1)), num_steps)


def cross_replace_alphas(
    tokenizer, target: str, num_steps: int, cross_replace_steps, max_len: int = 77
) -> torch.Tensor:
    """``alphas[step, j]``: 1 while target token j takes its cross-attention from the source.

    ``cross_replace_steps`` is a fraction, a ``[start, end]`` pair, or a dict of those keyed by words of
    the target prompt plus ``default_`` for all other tokens (P2P's convention).
    """
    spec = cross_replace_steps if isinstance(cross_replace_steps, dict) else {"default_": cross_replace_steps}
    alphas = torch.zeros(num_steps, max_len)
    start, end = cross_step_window(spec.get("default_", 1.0), num_steps)
    alphas[start:end] = 1.0
    for word, value in spec.items():
        if word == "default_":
            continue
        positions = word_positions(tokenizer, target, word)
        if not positions:
            raise EditSpecError(
                f"cross_replace_steps word {word!r} is not in the target prompt {target!r}",
                "cross_replace_steps",
            )
        start, end = cross_step_window(value, num_steps)
        alphas[:, positions] = 0.0
        alphas[start:end, positions] = 1.0
    return alphas

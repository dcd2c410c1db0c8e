"""Data-to-text with a causal LM: the prompt, the training features, and batched decoding.

One place decides how an input table becomes a prompt, so that training and decoding see the same
token ids:

    prompt  = tokenizer(PROMPT.format(source=...))                 (special tokens as the tokenizer adds them)
    target  = tokenizer(" " + reference, no special tokens) + [eos]

Training features label the target only (the prompt is context: label -100). Decoding runs
``model.generate()`` batched with left padding, the KV cache and every attached method active; only
the generated text is kept (no logits), and a progress bar shows the batches.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from .errors import ConfigError
from .settings import count, shown

PROMPT = "{source}\nText:"
IGNORE = -100  # label id the loss skips
MAX_BEAMS = 256  # beam search keeps num_beams rows per input; far beyond the widths used for data-to-text (1-10)


@dataclass(frozen=True)
class DecodingConfig:
    """How generations are made. Defaults: greedy, at most 30 new tokens (the paper's cap for E2E/WebNLG targets)."""

    max_new_tokens: int = 30
    num_beams: int = 1  # 1 = greedy
    batch_size: int = 16
    min_new_tokens: int = 0  # the end-of-sequence token is suppressed before this many (memtune bench: fixed length)

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size"):
            count(getattr(self, name), f"decoding setting {name}")
        count(self.num_beams, "decoding setting num_beams", limit=MAX_BEAMS)  # each beam is a row of the batch
        low = self.min_new_tokens
        if isinstance(low, bool) or not isinstance(low, int) or not 0 <= low <= self.max_new_tokens:
            raise ConfigError(f"decoding setting min_new_tokens must be an integer from 0 to max_new_tokens "
                              f"({self.max_new_tokens}), got {shown(low)}")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def context_length(model: Any) -> int | None:
    """The longest sequence the model's positions allow (None when the config does not say)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_ids(tokenizer: Any, source: str) -> list[int]:
    return tokenizer(PROMPT.format(source=source))["input_ids"]


def target_ids(tokenizer: Any, reference: str) -> list[int]:
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no end-of-sequence token, which ends every training target; set tokenizer.eos_token")
    return tokenizer(" " + reference.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def training_features(tokenizer: Any, source: str, reference: str, max_length: int) -> dict[str, list[int]] | None:
    """``input_ids``/``attention_mask``/``labels`` for one (source, reference) pair, the prompt masked out.

    A pair longer than ``max_length`` is not cut (a cut target teaches the model to stop mid-sentence and
    a cut prompt loses table cells): None is returned and the caller counts it as skipped."""
    prompt, target = prompt_ids(tokenizer, source), target_ids(tokenizer, reference)
    if len(prompt) + len(target) > max_length:
        return None
    ids = prompt + target
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prompt) + target}


def check_prompts_fit(prompts: Sequence[list[int]], limit: int | None, max_new_tokens: int, where: str) -> None:
    """Refuse, naming the first input, a prompt that leaves no room for ``max_new_tokens`` in the context."""
    if limit is None:
        return
    for i, ids in enumerate(prompts):
        if len(ids) + max_new_tokens > limit:
            raise ConfigError(
                f"{where}, input {i}: its prompt is {len(ids)} tokens, and with {max_new_tokens} new tokens it needs "
                f"{len(ids) + max_new_tokens} positions; the model has {limit}. Use a smaller --max-new-tokens "
                "or leave this input out"
            )


def generate_ids(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    config: DecodingConfig = DecodingConfig(),
    *,
    progress: bool = True,
    description: str = "decoding",
    where: str = "decoding",
) -> list[list[int]]:
    """The token ids the model generates after each source's prompt (the prompt and left padding removed;
    what follows the end-of-sequence token is padding, also removed)."""
    import torch
    from tqdm.auto import tqdm

    prompts = [prompt_ids(tokenizer, s) for s in sources]
    check_prompts_fit(prompts, context_length(model), config.max_new_tokens, where)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generated: list[list[int]] = []
    try:
        for start in tqdm(range(0, len(prompts), config.batch_size), desc=description, unit="batch", disable=not progress,
                          leave=False):  # fmt: skip
            batch = prompts[start : start + config.batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)  # (B, T) left padding
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=config.max_new_tokens, num_beams=config.num_beams,
                    do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, use_cache=True,
                    min_new_tokens=config.min_new_tokens or None, output_scores=False, output_logits=False,
                    return_dict_in_generate=False,  # token ids only: no logits kept, however many inputs
                )  # fmt: skip
            generated += [_until_eos(row.tolist(), tokenizer.eos_token_id) for row in out[:, width:]]
    finally:
        model.train(was_training)
    return generated


def _until_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def generate(model: Any, tokenizer: Any, sources: Sequence[str], config: DecodingConfig = DecodingConfig(), **kwargs: Any) -> list[str]:
    """The model's continuation of each source's prompt, as text (special tokens dropped, stripped)."""
    ids = generate_ids(model, tokenizer, sources, config, **kwargs)
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]

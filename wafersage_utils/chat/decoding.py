"""Greedy decoding that stops computing an answer once it has ended.

`generate` keeps every row of a batch in every decoding step until the longest answer ends, feeding padding to
the rows that have finished. For the tiny model's evaluation questions most rows finish early (answers of 5 to
64 tokens in one batch: on 384 wm811k validation questions 54% of the row-steps were padding), and each row costs
compute at every step. :func:`greedy_dropping_finished` is the same greedy loop with the finished rows taken out
of the batch, and out of its KV cache, at the step they end.

It plugs into transformers as a custom decoding method (``model.generate(..., custom_generate=
greedy_dropping_finished)``): `generate` still prepares the inputs, the generation config, the logits processors
(the exported model's `sequence_bias` among them) and the stopping criteria, so the answers are those of plain
greedy `generate` (tested token for token); only the loop differs. Each step's model inputs come from
`generate`'s own helpers (`prepare_inputs_for_generation`, `_update_model_kwargs_for_generation`); transformers
is pinned in requirements.txt, and a change there fails the token-for-token tests rather than moving answers.
Requirements: greedy (`do_sample` off), one beam, a dynamic KV cache, no streamer, and stopping criteria and
logits processors that judge each row from its own tokens (the library's do; a criterion that keeps per-row
state by position in the batch would see the rows move).
"""
from __future__ import annotations


def _select_rows(model_kwargs: dict, keep, batch: int) -> dict:
    """The model's per-row generation state for the rows `keep`: the KV cache, and every tensor whose batch
    dimension is `batch` (the attention mask, token types; position ids of shape (k, batch, length))."""
    import torch
    from transformers.cache_utils import Cache
    out = {}
    for key, value in model_kwargs.items():
        if isinstance(value, Cache):
            value.batch_select_indices(keep)
        elif isinstance(value, torch.Tensor) and key == "position_ids" and value.dim() == 3:
            value = value[:, keep]
        elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            value = value[keep]
        out[key] = value
    return out


def greedy_dropping_finished(model, input_ids, logits_processor, stopping_criteria, generation_config,
                             synced_gpus: bool = False, streamer=None, **model_kwargs):
    """Greedy decoding for `generate(custom_generate=...)`: the token ids of prompt and answer per row, finished
    rows padded with the pad token after their end, as plain greedy `generate` returns them."""
    import torch
    from transformers.cache_utils import DynamicCache
    from transformers.generation.utils import MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL
    if generation_config.do_sample or generation_config.num_beams != 1 or synced_gpus or streamer is not None:
        raise ValueError("greedy_dropping_finished decodes greedily, one beam, no streamer, one process")
    if generation_config.return_dict_in_generate:
        raise ValueError("greedy_dropping_finished returns token ids only (return_dict_in_generate is off)")
    if not isinstance(model_kwargs.get("cache"), DynamicCache):
        raise ValueError(f"greedy_dropping_finished needs a DynamicCache, not {type(model_kwargs.get('cache'))}")
    batch = input_ids.shape[0]
    rows = list(range(batch))  # the original row of each row still decoding
    ended: list = [None] * batch
    inputs = model.prepare_inputs_for_generation(input_ids, is_first_iteration=True, **model_kwargs)
    outputs = model(**inputs, return_dict=True)
    for key in (*MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL, "image_grid_thw", "video_grid_thw"):
        model_kwargs.pop(key, None)  # used by the prefill only; their first dimension is not the batch
    while True:
        model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs)
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
        scores = logits_processor(input_ids, logits)
        input_ids = torch.cat([input_ids, scores.argmax(dim=-1)[:, None]], dim=-1)
        done = stopping_criteria(input_ids, scores)
        if done.any():
            for j in done.nonzero().flatten().tolist():
                ended[rows[j]] = input_ids[j]
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            model_kwargs = _select_rows(model_kwargs, keep, input_ids.shape[0])
            input_ids = input_ids[keep]
            rows = [rows[j] for j in keep.tolist()]
        inputs = model.prepare_inputs_for_generation(input_ids, next_sequence_length=1, **model_kwargs)
        outputs = model(**inputs, return_dict=True)
    pad = generation_config._pad_token_tensor
    out = input_ids.new_full((batch, max(len(s) for s in ended)), int(pad) if pad is not None else 0)
    for i, seq in enumerate(ended):
        out[i, :len(seq)] = seq
    return out

"""The Qwen3-VL vision tower's attention over a batch of same-size pictures in one call.

The tower packs every picture of a batch into one sequence and attends within each picture. Without flash
attention (a CPU, or a GPU without the flash-attn package) transformers splits the sequence and calls
scaled-dot-product attention once per picture and layer: a batch of 128 wafer maps makes 256 small calls per
prefill, and at the tiny model's sizes the calls' overhead is most of the tower's attention time. The
pictures the pipeline trains on and asks about all have the same size, so the same attention is one batched
call. :func:`batch_vision_attention` gives a loaded model's vision attention modules that path; pictures of
different sizes, attention dropout in training, flash attention and any attention implementation other than
SDPA keep the library's own forward. On a CPU the outputs and the gradients are bitwise those of the library's
path (tested): the same answers, the same trained weights.
"""
from __future__ import annotations

import types


def _batched_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """Qwen3VLVisionAttention.forward with the per-picture split done as one batched SDPA call when every
    picture has the same number of patches; otherwise the library's forward."""
    import torch
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if ((self.training and self.attention_dropout > 0) or self.config._attn_implementation != "sdpa"
            or lengths.numel() < 2 or not bool((lengths == lengths[0]).all())):
        return type(self).forward(self, hidden_states, cu_seqlens, position_embeddings=position_embeddings,
                                  max_seqlen=max_seqlen, **kwargs)
    seq = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    n, length = lengths.numel(), int(lengths[0])
    q, k, v = (t.reshape(n, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scaling)
    return self.proj(out.transpose(1, 2).reshape(seq, -1))


def batch_vision_attention(model) -> int:
    """Give every Qwen3-VL vision attention module of `model` the batched path; the number of modules given it
    (0 for other architectures, which keep their own)."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionAttention
    n = 0
    for module in model.modules():
        if type(module) is Qwen3VLVisionAttention:
            module.forward = types.MethodType(_batched_forward, module)
            n += 1
    return n

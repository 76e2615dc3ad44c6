"""Greedy decoding that drops finished answers from the batch gives `generate`'s own greedy tokens, row for
row, whatever order the rows end in; the vision tower's batched attention gives the library's outputs bit for
bit."""
import pytest
import torch
from transformers import StoppingCriteria

from tests.test_synth import _one
from wafersage_utils.chat.decoding import greedy_dropping_finished
from wafersage_utils.corpus import teacher
from wafersage_utils.maps import render
from wafersage_utils.training import tiny_vlm


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """A saved untrained tiny Qwen3-VL whose random weights are drawn at a larger scale than the builder's, so
    that each answer depends on its picture and question (at the builder's scale every row repeats one token)."""
    from transformers import AutoModelForImageTextToText
    path = tmp_path_factory.mktemp("tiny") / "m"
    tiny_vlm.build_tiny_vlm(list(teacher.load_prompts().values()) * 5, path, tiny_vlm.TinySpec(image_size=64), seed=3)
    model = AutoModelForImageTextToText.from_pretrained(path)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 2 / p.shape[1] ** 0.5)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_path):
    """The scrambled tiny model, its processor and a batch of six image questions of different lengths
    (left-padded, as the backends batch them)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    processor = AutoProcessor.from_pretrained(tiny_path)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(tiny_path).eval()
    maps = [_one(k, density=1.0)[0] for k in ("Center", "Donut", "Edge-Ring", "Scratch", "Random", "Near-full")]
    questions = ["Where?", "Describe the failing dies on this wafer map in detail.", "Type?",
                 "What process step could cause this pattern, and why?", "Is it clean?", "Name the defect."]
    convs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    texts = processor.apply_chat_template(convs, add_generation_prompt=True, tokenize=False)
    images = [render.to_image(m, 64).convert("RGB") for m in maps]
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    return model, processor, batch


class StopAfter(StoppingCriteria):
    """Ends each row after a number of new tokens that its own prompt decides (2 to 8, from the length of its
    question): rows end at different steps, judged from their own tokens only."""

    def __init__(self, n_prompt: int, pad: int):
        self.n_prompt, self.pad = n_prompt, pad

    def __call__(self, input_ids, scores, **kwargs):
        asked = (input_ids[:, :self.n_prompt] != self.pad).sum(dim=1)
        return torch.full_like(asked, input_ids.shape[1] - self.n_prompt) >= 2 + asked % 7


def _both(model, batch, **kw):
    with torch.inference_mode():
        plain = model.generate(**batch, do_sample=False, **kw)
        dropping = model.generate(**batch, do_sample=False, custom_generate=greedy_dropping_finished, **kw)
    return plain, dropping


def test_same_tokens_as_generate_when_rows_end_at_different_steps(tiny):
    model, _, batch = tiny
    n_prompt = batch["input_ids"].shape[1]
    stop = StopAfter(n_prompt, model.generation_config.pad_token_id)
    plain, dropping = _both(model, batch, max_new_tokens=12, stopping_criteria=[stop])
    ends = (plain[:, n_prompt:] != model.generation_config.pad_token_id).sum(dim=1)
    assert len(set(ends.tolist())) >= 3  # the rows really leave the batch at different steps
    assert torch.equal(plain, dropping)


def test_same_tokens_with_the_end_token_the_length_limit_and_a_sequence_bias(tiny):
    # The exported models carry a `sequence_bias` (calibration): generate's logits processors must still apply,
    # each to its row's own tokens, after the rows around it have left.
    model, _, batch = tiny
    n_prompt = batch["input_ids"].shape[1]
    plain, _ = _both(model, batch, max_new_tokens=10)
    new = plain[:, n_prompt:]
    assert len({tuple(r) for r in new.tolist()}) == len(new)  # the answers differ
    eos = sorted({int(new[0, 4]), int(new[2, 2]), int(new[4, 6])})  # rows end at different steps, some at 10
    bias = [[[int(new[1, 0]), int(new[1, 1])], -100.0]]  # forbids row 1's second token after its first
    plain, dropping = _both(model, batch, max_new_tokens=10, eos_token_id=eos, sequence_bias=bias)
    assert torch.equal(plain, dropping)
    unbiased, _ = _both(model, batch, max_new_tokens=10, eos_token_id=eos)
    assert not torch.equal(unbiased, dropping)  # the bias changed an answer: it was applied, not skipped
    ends = (plain[:, n_prompt:] != model.generation_config.pad_token_id).sum(dim=1)
    assert len(set(ends.tolist())) >= 2


def test_refuses_what_it_does_not_decode(tiny):
    model, _, batch = tiny
    with pytest.raises(ValueError, match="greedily"), torch.inference_mode():
        model.generate(**batch, do_sample=True, max_new_tokens=2, custom_generate=greedy_dropping_finished)


def test_batched_vision_attention_is_the_librarys_bit_for_bit(tiny):
    import copy

    from wafersage_utils.chat.vision_attention import batch_vision_attention
    model, processor, batch = tiny
    fast = copy.deepcopy(model)
    assert batch_vision_attention(fast) == model.config.vision_config.depth
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*a, **kw):
        calls.append(a[0].shape)
        return sdpa(*a, **kw)
    with torch.inference_mode():
        ref = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        torch.nn.functional.scaled_dot_product_attention = counted
        try:
            out = fast.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        finally:
            torch.nn.functional.scaled_dot_product_attention = sdpa
    assert len(calls) == model.config.vision_config.depth and calls[0][0] == 6  # one call per layer, 6 pictures
    assert torch.equal(ref.pooler_output, out.pooler_output)
    assert all(torch.equal(a, b) for a, b in zip(ref.deepstack_features, out.deepstack_features))
    n_prompt = batch["input_ids"].shape[1]
    with torch.inference_mode():
        a = model.generate(**batch, do_sample=False, max_new_tokens=8)
        b = fast.generate(**batch, do_sample=False, max_new_tokens=8, custom_generate=greedy_dropping_finished)
    assert torch.equal(a[:, n_prompt:], b[:, n_prompt:])
    # Pictures of different sizes keep the library's per-picture path.
    small = processor(text=[processor.apply_chat_template([[{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Type?"}]}]], add_generation_prompt=True, tokenize=False)[0]] * 2,
        images=[render.to_image(_one("Center", density=1.0)[0], s).convert("RGB") for s in (64, 32)],
        padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = model.model.visual(small["pixel_values"], grid_thw=small["image_grid_thw"])
        out = fast.model.visual(small["pixel_values"], grid_thw=small["image_grid_thw"])
    assert torch.equal(ref.pooler_output, out.pooler_output)


def test_batched_vision_attention_trains_to_the_same_gradients(tiny):
    # The seeing step and SFT train through the batched path: its gradients must be the library's, bit for bit.
    import copy

    from wafersage_utils.chat.vision_attention import batch_vision_attention
    model, _, batch = tiny
    ref, fast = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    batch_vision_attention(fast)
    grads = []
    for m in (ref, fast):
        out = m.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        (out.pooler_output.pow(2).mean() + sum(d.pow(2).mean() for d in out.deepstack_features)).backward()
        grads.append([p.grad for p in m.model.visual.parameters()])
    assert all(g is not None and torch.equal(g, h) for g, h in zip(*grads))
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_a_picture_asked_several_questions_is_processed_and_seen_once(tiny_path, tmp_path, monkeypatch):
    # The evaluation asks each map several questions; the hf backend decodes, processes and encodes each
    # distinct picture of a batch once and gives its features to every question about it. The answers must be
    # those of encoding every question's picture on its own.
    from wafersage_utils.chat import llm
    from wafersage_utils.chat.hf_chat import HFChat
    pngs = [render.render_cached([_one(k, density=1.0)[0]], 64, tmp_path / k)[0].read_bytes()
            for k in ("Center", "Scratch", "Donut")]
    questions = ["Where?", "Describe the failing dies on this wafer map in detail.", "Type?", "Is it clean?"]
    settings = llm.ChatSettings(model="tiny", max_tokens=8, temperature=0.0)
    reqs = [llm.build_request(settings, "", q, png) for q in questions for png in pngs]  # pictures interleaved
    plain = HFChat(str(tiny_path), tmp_path / "plain", batch_size=12, shared_pictures=False)
    a = [r.text for r in plain.complete_many(reqs, progress=False)]
    shared = HFChat(str(tiny_path), tmp_path / "shared", batch_size=12)
    seen, processed = [], []
    encode, process = shared.model.get_image_features, type(shared.processor.image_processor.inner).__call__

    def count_seen(**kw):
        seen.append(len(kw["image_grid_thw"]))
        return encode(**kw)

    def count_processed(self, images, **kw):
        processed.append(len(images))
        return process(self, images, **kw)
    monkeypatch.setattr(shared.model, "get_image_features", count_seen)
    monkeypatch.setattr(type(shared.processor.image_processor.inner), "__call__", count_processed)
    b = [r.text for r in shared.complete_many(reqs, progress=False)]
    assert seen == [3] and processed == [3]  # one batch of 12 questions about 3 maps
    assert len(set(a)) >= 6 and a == b  # answers that depend on picture and question, and the same ones


def test_processing_each_distinct_picture_once_gives_the_processors_outputs(tiny_path):
    from transformers import AutoProcessor

    from wafersage_utils.chat.hf_chat import _OncePerPicture
    processor = AutoProcessor.from_pretrained(tiny_path)
    pictures = [render.to_image(_one(k, density=1.0)[0], 64).convert("RGB") for k in ("Center", "Scratch")]
    pictures.append(render.to_image(_one("Donut", density=1.0)[0], 32).convert("RGB"))  # another size
    asked = [pictures[i] for i in (0, 1, 0, 2, 2, 1, 0)]
    ref = processor.image_processor(asked, return_tensors="pt")
    out = _OncePerPicture(processor.image_processor)(asked, return_tensors="pt")
    assert set(out) == set(ref) and all(torch.equal(out[k], ref[k]) for k in ref)

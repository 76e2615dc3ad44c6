"""The seeing step's inputs: building the captioning dataset and encoding it, the old way against today's, side by side.

    python tests/benchmarks/bench_seeing_inputs.py [--maps 3000] [--model results/default/models/sft/merged]

The base build captions every training map and 24,000 generated ones (a caption and two visual questions each:
about 82,000 examples on 27,000 pictures in the default run) and turns them into the processor's tensors once
(`batches.encode`). Two steps of that were measured as pure overhead (docs/experiments.md, 2026-12-04 night):

- building the dataset: old = `Dataset.from_dict` with a PIL image per example, so `datasets` encodes a map's
  PNG once per example (three times); new = `models.caption_dataset`, which encodes each picture once;
- reading the conversations in `batches.encode`: old = indexing the dataset's lazy column row by row; new = the
  column read as one list.

Each is run on the same examples in this process, old first; the bytes and conversations must be equal. The
last line also times `batches.encode` as a whole (new path) for scale. Run it alone: two cores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--maps", type=int, default=3000, help="generated maps captioned (3 examples each)")
    ap.add_argument("--model", type=Path, default=ROOT / "results" / "default" / "models" / "sft" / "merged",
                    help="a tiny model folder whose processor encodes the examples")
    args = ap.parse_args(argv)
    from datasets import Dataset, Image, List
    from transformers import AutoProcessor
    from trl.chat_template_utils import get_training_chat_template

    from wafersage_utils.maps.synth import SynthConfig, generate
    from wafersage_utils.training import models
    from wafersage_utils.training.batches import encode

    maps = generate(SynthConfig(n_wafers=args.maps, seed=7)).assign(split="train")
    maps = maps.assign(id=[f"bench-{i}" for i in range(len(maps))])
    images, captions, prompts = models.caption_corpus(maps, 64, 0)
    n = len(images)
    rows = []

    def plain():
        return Dataset.from_dict({
            "images": [[im] for im in images],
            "messages": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]},
                          {"role": "assistant", "content": [{"type": "text", "text": c}]}]
                         for p, c in zip(prompts, captions)]})
    old_ds, t_old = timed(plain)
    new_ds, t_new = timed(lambda: models.caption_dataset(images, captions, prompts))
    raw = List(Image(decode=False))
    same = old_ds.cast_column("images", raw)["images"] == new_ds.cast_column("images", raw)["images"]
    rows.append({"step": "build the dataset", "examples": n, "pictures": len({id(im) for im in images}),
                 "old_s": round(t_old, 2), "new_s": round(t_new, 2), "ratio": round(t_old / t_new, 2), "same": same})

    column = new_ds["messages"]
    old_msgs, t_old = timed(lambda: [column[i] for i in range(len(new_ds))])
    new_msgs, t_new = timed(lambda: new_ds["messages"][:])
    rows.append({"step": "read the conversations", "examples": n, "old_s": round(t_old, 2), "new_s": round(t_new, 3),
                 "ratio": round(t_old / max(t_new, 1e-9), 1), "same": old_msgs == new_msgs})

    processor = AutoProcessor.from_pretrained(str(args.model))
    template = get_training_chat_template(processor)
    _, t_enc = timed(lambda: encode(new_ds, processor, template))
    rows.append({"step": "batches.encode (new, whole)", "examples": n, "new_s": round(t_enc, 2),
                 "ms_per_example": round(1000 * t_enc / n, 3)})
    for r in rows:
        print(json.dumps(r), flush=True)
    saved = rows[0]["old_s"] - rows[0]["new_s"] + rows[1]["old_s"] - rows[1]["new_s"]
    print(json.dumps({"saved_s_per_1000_examples": round(1000 * saved / n, 2),
                      "saved_s_for_81654_examples": round(81654 * saved / n, 1)}))
    return 0 if all(r.get("same", True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

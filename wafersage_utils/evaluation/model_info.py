"""What an exported model needs beside its weights to be asked correctly: `wafersage.json`, and its model card.

A model trained here saw wafer maps rendered one way (a square of `image_size` pixels, nearest-neighbour, the
fixed three-colour palette) and a defect-type question worded one way. Pixels do not say which: a scorer or a
server that renders at another size, in other colours, or words the question differently measures another
model. So every exported folder (merged model and adapter) carries this file, written at export by stage 05
(and 06) and read back by the scorer (:mod:`.scorer`), which refuses a folder without it.

The model card (`README.md` with the Hugging Face metadata block) is generated from the same record and the
run's measured metrics, so the numbers in a card are always those of the run that made the model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..corpus.vqa import CARD_PROMPTS, SYSTEM_PROMPT
from ..maps.conventions import PALETTE, VOCAB
from ..runner.runs import atomic_write_text, write_json
from .views import check_views

INFO_FILE = "wafersage.json"
FORMAT = "wafersage-model/1"
TYPE_QUESTION = CARD_PROMPTS["card_type"]  # the model card's defect-type question, one of the training templates
CODES = {"0": "no die", "1": "pass", "2": "fail"}
NAMES = {"sft": "WaferSAGE SFT model", "rl": "WaferSAGE RL (GSPO) model"}


class MissingModelInfo(FileNotFoundError):
    """An exported model folder without `wafersage.json`: it cannot be asked as it was trained."""


@dataclass(frozen=True)
class ModelInfo:
    """How to show a map to the model and ask it, and what it was trained on."""

    image_size: int  # pixels of the square rendered map the model was trained on (its processor may resize it)
    palette: dict = field(default_factory=lambda: {str(i): list(c) for i, c in enumerate(PALETTE)})  # die code -> RGB
    scaling: str = "nearest"  # how a die grid becomes pixels: each axis scaled on its own, nearest neighbour
    question: str = TYPE_QUESTION  # the defect-type question, worded as in training
    answer_style: str = "plain"  # plain | reasoning (<REASONING>/<SOLUTION>: the answer is in SOLUTION)
    system_prompt: str = ""  # sent before the question (the paper's prompt for reasoning-style models)
    labels: list = field(default_factory=lambda: list(VOCAB))  # the label vocabulary answers are read into
    max_new_tokens: int = 64  # enough for the type statement and its first detail
    views: int = 1  # each map asked in this many views, the answers voted (evaluation/views.py): 1, 4 turns, 8 with mirrors
    base_model: str = ""  # what was fine-tuned ("tiny": the embedded Qwen3-VL built by stage 05)
    trained_on: dict = field(default_factory=dict)  # source, maps and pairs by split, the run folder
    run: str = ""  # the run folder that made it
    commit: str = ""  # the repository commit of that run
    format: str = FORMAT

    def palette_rgb(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(tuple(int(v) for v in self.palette[str(code)]) for code in range(3))

    def messages(self, image_url: str | None = None) -> list[dict]:
        """The chat messages of the defect-type question: system prompt (if any), then image and question."""
        image = {"type": "image", **({"url": image_url} if image_url else {})}
        out = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}] if self.system_prompt else []
        return out + [{"role": "user", "content": [image, {"type": "text", "text": self.question}]}]


def info_for_run(image_size: int, answer_style: str, base_model: str, trained_on: dict, run: str = "",
                 commit: str = "", views: int = 1) -> ModelInfo:
    """The record of a model trained by a run: the run's rendered size and answer style decide the rest; `views`
    is what stage 05 chose on validation (1 unless it was asked to choose)."""
    return ModelInfo(image_size=int(image_size), answer_style=answer_style,
                     system_prompt=SYSTEM_PROMPT if answer_style == "reasoning" else "",
                     max_new_tokens=256 if answer_style == "reasoning" else 64, base_model=base_model,
                     trained_on=trained_on, run=run, commit=commit, views=int(views))


def write_info(folder: Path, info: ModelInfo) -> Path:
    """`folder/wafersage.json` (written whole through a temporary file)."""
    out = Path(folder) / INFO_FILE
    write_json(out, asdict(info))
    return out


def read_info(folder: Path) -> ModelInfo:
    """The record of an exported model folder; a clear error when it is missing, unreadable or incomplete."""
    path = Path(folder) / INFO_FILE
    if not path.exists():
        raise MissingModelInfo(
            f"{folder}: no {INFO_FILE}. The scorer needs the image size, palette and question wording the model was "
            "trained with, and pixels cannot tell them; folders exported by stage 05 or 06 carry the file. For a model "
            "made elsewhere, write one with wafersage_utils.evaluation.model_info.write_info(folder, ModelInfo(...)).")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path}: format {raw.get('format') if isinstance(raw, dict) else raw!r}; expected {FORMAT!r}")
    known = {f.name for f in fields(ModelInfo)}
    if "image_size" not in raw:
        raise ValueError(f"{path}: field 'image_size' missing (pixels of the square map the model was trained on)")
    info = ModelInfo(**{k: v for k, v in raw.items() if k in known})
    if not isinstance(info.image_size, int) or info.image_size < 8:
        raise ValueError(f"{path}: image_size {info.image_size!r}; expected an integer of at least 8 pixels")
    try:
        rgb = info.palette_rgb()
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: palette {info.palette!r}; expected RGB triples for die codes '0', '1' and '2'") from exc
    if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in rgb):
        raise ValueError(f"{path}: palette {info.palette!r}; expected RGB triples of 0..255")
    check_views(info.views, f"{path}: field 'views'")
    unknown = sorted(set(info.labels) - set(VOCAB))
    if unknown:
        raise ValueError(f"{path}: labels {unknown} are not in the vocabulary {list(VOCAB)}")
    return info


# Which of a run's metrics a card shows: (metrics file stem, key, what it is); {m} is the model (sft, rl). Only
# the model's own rows enter the Hugging Face model-index; the baseline's are context in the table.
CARD_METRICS = (
    ("07_eval", "{m}/type_accuracy", "defect-type accuracy, test split (single-pattern maps; type_eval says which)"),
    ("07_eval", "{m}/type_macro_f1", "defect-type macro-F1, test split"),
    ("07_eval", "{m}/type_exact_match", "exact label-set accuracy over every test map, mixed ones included"),
    ("07_eval", "{m}/type_pattern_macro_f1", "macro-F1 over the eight patterns (defect-free left out), every test map"),
    ("07_eval", "type_eval_maps", "test maps of the rows above (with type_eval split: every labelled test map)"),
    ("07_eval", "baseline/type_accuracy", "classical baseline (features + gradient boosting) on the same maps"),
    ("07_eval", "baseline/type_macro_f1", "classical baseline macro-F1 on the same maps"),
    ("07_eval", "baseline/type_exact_match", "classical baseline exact match on the same maps"),
    ("07_eval", "baseline/type_pattern_macro_f1", "classical baseline pattern macro-F1 on the same maps"),
    ("07_eval", "{m}/rule_score", "rubric rule score, test split (0-1)"),
    ("07_eval", "{m}/judge_score", "judge score, test split (0-10)"),
    ("05_sft", "{m}/type_accuracy_test", "defect-type accuracy at stage 05 on the sampled test wafers' VQA questions"),
    ("07_eval", "sim2real/{m}/macro_f1", "a synthetic-trained model on real WM-811K maps, macro-F1"),
)


INDEXED = {f"{m}/type_{k}" for m in ("sft", "rl")
           for k in ("accuracy", "macro_f1", "exact_match", "pattern_macro_f1")}  # the model-index's rows


def _cell(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def model_card(info: ModelInfo, metrics: dict[str, dict], training: dict, which: str = "sft") -> str:
    """README.md of an exported folder: the Hugging Face metadata block, what the model is, how to use it, how
    it was trained (`training`: setting -> value) and what its run measured (`metrics`: stage stem -> metrics)."""
    data = info.trained_on.get("source", "synthetic")
    lora = training.get("lora", True)
    tuned = "LoRA SFT" if lora else "Full-parameter SFT"
    datasets = {"wm811k": "WM-811K (Wu et al. 2015)", "mixedwm38": "MixedWM38 (Wang et al. 2020)",
                "synthetic": "WaferSAGE generated wafer maps"}.get(data, data)
    name = NAMES.get(which, which)
    measured = [(k.format(m=which), what, metrics.get(stem, {}).get(k.format(m=which))) for stem, k, what in CARD_METRICS]
    rows = "\n".join(f"| `{k}` | {_cell(v)} | {what} |" for k, what, v in measured if v is not None)
    index = "\n".join(f"    - name: {k}\n      type: {k.split('/')[-1]}\n      value: {round(v, 4)}"
                      for k, _, v in measured if isinstance(v, float) and k in INDEXED)
    base = "Qwen3-VL (tiny, built offline by the pipeline)" if info.base_model in ("", "tiny") or \
        "tiny-" in info.base_model else info.base_model
    base_meta = info.base_model if "/" in info.base_model and not Path(info.base_model).exists() else ""
    header = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "license: apache-2.0",
              "language: [en]", f"tags: [wafersage, wafer-map, semiconductor, qwen3-vl{', lora' if lora else ''}]",
              *([f"base_model: {base_meta}"] if base_meta else []),
              f"datasets: [\"{datasets}\"]", "model-index:", f"- name: {name}", "  results:",
              "  - task: {type: image-text-to-text, name: wafer-map defect type}",
              f"    dataset: {{name: \"{datasets}\", type: {data}, split: test}}", "    metrics:",
              index or "    []", "---"]
    trained = ", ".join(f"{k} {v}" for k, v in info.trained_on.items() if k != "run")
    settings = "\n".join(f"| {k} | {v} |" for k, v in training.items())
    q = info.question
    bias = metrics.get("05_sft", {}).get("sft/none_bias") or 0.0  # RL starts from the SFT model and keeps its bias
    bias_note = (f"\nIts `generation_config.json` adds {bias:g} to the logit of \"no\" right after \"This wafer map shows\"\n"
                 "(`sequence_bias`): the point where it calls a map defect-free, chosen on the run's validation maps because\n"
                 "its training mix under-states defect-free maps. transformers' `generate` and `pipeline` apply it; a server\n"
                 "that ignores `sequence_bias` (vLLM) answers at the unbiased point.\n") if bias else ""
    views_note = (f"\n`wafersage.json` sets `views: {info.views}`: the scorer asks about each map in {info.views} views (its quarter turns"
                  f"{' and their mirror images' if info.views == 8 else ''}) and keeps the answer most views give, chosen on the run's\n"
                  "validation maps; the snippet above asks one view.\n") if info.views > 1 else ""
    return "\n".join(header) + f"""
# {name}

{tuned if which == "sft" else tuned + ", then GSPO with rubric rewards (LoRA),"} of {base} on WaferSAGE wafer-map question-answer pairs ({datasets}){", merged into the base weights" if lora or which != "sft" else ""}. It
answers questions about a wafer map image: defect type, where the failing dies are, what they look like, and
plausible process causes. Answers are hypotheses for engineers to review, not a diagnosis.

Trained on: {trained or data}. Run: `{info.run or '-'}` at commit `{info.commit or '-'}`.

## How to ask it
Render the map as it was trained: a {info.image_size} x {info.image_size} px square, each die a block of
colour ({', '.join(f'{CODES[c]} RGB{tuple(v)}' for c, v in info.palette.items())}), {info.scaling} scaling;
ask "{q}". `wafersage.json` in this folder holds these settings; `wafersage-score` reads them.

```python
from transformers import pipeline
pipe = pipeline("image-text-to-text", model="<this folder>")
messages = [{{"role": "user", "content": [{{"type": "image", "url": "wafer.png"}},
                                         {{"type": "text", "text": "{q}"}}]}}]
print(pipe(text=messages, max_new_tokens={info.max_new_tokens})[0]["generated_text"][-1]["content"])
```

Score it on any labelled WM-811K pickle or MixedWM38 `.npz`, or serve it behind an OpenAI-compatible endpoint:

```bash
wafersage-score <this folder> LSWMD.pkl --out scores/   # accuracy, macro-F1, per class, per map
wafersage-serve <this folder> --image-root <folder of wafer PNGs>   # or: vllm serve <this folder>
```
{bias_note}{views_note}
## Training

| setting | value |
|---|---|
{settings}

## Measured (the run that made it)

| metric | value | what |
|---|---|---|
{rows}

## Limitations
Trained on {datasets} only; it sees the die grid, not lot history, process or tool data. Root causes are
hypotheses. Real fab maps differ from any public set: score it on your own labelled maps first.
"""


def write_card(folder: Path, info: ModelInfo, metrics: dict[str, dict], training: dict, which: str = "sft") -> Path:
    out = Path(folder) / "README.md"
    atomic_write_text(out, model_card(info, metrics, training, which))
    return out


def run_metrics(run_dir: Path) -> dict[str, dict]:
    """Every metrics file of a run, by stage stem."""
    folder = Path(run_dir) / "metrics"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}


TRAINING_KEYS = ("model_name_or_path", "learning_rate", "num_train_epochs", "lora", "lora_r", "lora_alpha", "lora_dropout",
                 "lora_vision", "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay",
                 "lr_scheduler_type", "max_length", "seed", "tiny_image_size")


def document_export(run_dir: Path, folder: Path, which: str = "sft") -> ModelInfo:
    """Write `wafersage.json` and the model card into an exported folder of a run, from what the run recorded:
    rendered size (02) and answer style (04) from its manifest, training settings (05), the maps and pairs it
    trained on, its commit, and every metric measured so far (stage 07 calls this again, so the card carries
    the final numbers)."""
    run_dir, folder = Path(run_dir).resolve(), Path(folder)
    manifest = read_json_or_empty(run_dir / "manifest.json")
    settings = read_json_or_empty(run_dir / "settings" / "05_sft.json")
    metrics = run_metrics(run_dir)
    real = read_json_or_empty(run_dir / "scores" / "wm811k_dev" / "metrics.json")  # the scorer on real maps
    if which == "sft" and "macro_f1" in real:
        metrics.setdefault("07_eval", {}).setdefault("sim2real/sft/macro_f1", real["macro_f1"])
    clean, sft = metrics.get("01_clean", {}), metrics.get("05_sft", {})
    trained_on = {"source": clean.get("source", "synthetic"), "train_split_maps": clean.get("split/n_train"),
                  "sft_pairs": sft.get("n_sft_pairs"), "type_stream_pairs": sft.get("n_type_stream_pairs")}
    # The commit the model was trained at: stage 05's (or 06's, for RL) record, not the last invocation's.
    stages = read_json_or_empty(run_dir / "status.json").get("stages", {})
    git = stages.get("06_rl" if which == "rl" else "05_sft", {}).get("git") \
        or read_json_or_empty(run_dir / "environment.json").get("git", {})
    commit = (git.get("commit") or "") + ("-dirty" if git.get("dirty") else "")
    info = info_for_run(manifest.get("02_describe", {}).get("image_size", 128),
                        manifest.get("04_vqa", {}).get("answer_style", "plain"),
                        settings.get("model_name_or_path", "tiny"),
                        {k: v for k, v in trained_on.items() if v is not None}, run=run_dir.name, commit=commit,
                        views=sft.get("sft/type_views", 1))  # chosen by stage 05 for its model; RL keeps it
    write_info(folder, info)
    write_card(folder, info, metrics, {k: settings[k] for k in TRAINING_KEYS if k in settings}, which)
    return info


def read_json_or_empty(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text()) if Path(path).exists() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def main(argv: list[str] | None = None) -> int:
    """`python -m wafersage_utils.evaluation.model_info RUN [RUN ...]`: (re)write wafersage.json and the card of
    each run's exported models (models/sft/merged, models/rl/merged where present) without retraining."""
    import sys
    for run in (argv if argv is not None else sys.argv[1:]):
        for which in ("sft", "rl"):
            folder = Path(run) / "models" / which / "merged"
            if (folder / "config.json").exists():
                document_export(Path(run), folder, which)
                print(f"{folder}: {INFO_FILE} and README.md written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Score an exported model on any labelled file of wafer maps: `python -m wafersage_utils.score MODEL DATA`.

MODEL is an exported folder (a merged model, or a LoRA adapter whose base is reachable) carrying
`wafersage.json` (:mod:`.model_info`), or a run folder (its stage-05 SFT model). DATA is a WM-811K-layout
pickle (`LSWMD.pkl` or a re-save, compressed or not) or a MixedWM38 `.npz`, read by the project's loaders.
Each map is rendered exactly as the model was trained (size, palette, scaling from `wafersage.json`), asked
the defect-type question in the training wording, greedily, in batches; the answer is read back into the
label vocabulary by the parser every stage uses (:func:`.answers.parse_labels`).

Written to --out: `metrics.json` (stable keys: accuracy, macro_f1, n_maps, maps_per_second; for files with
mixed maps also exact_match and pattern_macro_f1), `per_class.csv` (precision, recall, F1 with 95% bootstrap
intervals), `per_map.csv.gz` (id, true, predicted, correct, raw answer) and `confusion.png`. A model whose
`wafersage.json` sets `views` above 1 is asked about each map in that many views (quarter turns, mirrored) and
the label set most views name is its prediction (:mod:`.views`; `views` in metrics.json, the views asked and
agreeing per map in per_map.csv.gz). A further view is asked only about the maps whose vote the views before it
left open, so the prediction is the full vote's at fewer passes (`views_asked_per_map`); `--views N` overrides
the count. A plain answer
is generated up to the end of the sentence that states the type, which is all the parser reads (the same
labels as the whole answer; 1.3x the maps per second in `bench_tiny_model.py`); `--full-answers` generates
each to its end.

Definitions. accuracy = exact_match: the answer's label set equals the map's. macro_f1: one-vs-rest F1 over
the labels that occur in the truth, the defect-free label included (for single-label files the usual
macro-F1). pattern_macro_f1: the same over the eight patterns only (MixedWM38's measure). An answer that
names no label is wrong and counted in `unparsed_share`. Maps without a label are skipped and counted
(`n_unlabelled_skipped`). Intervals resample maps (each map is its own wafer) 1000 times.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..chat.decoding import greedy_dropping_finished
from ..chat.vision_attention import batch_vision_attention
from ..maps.conventions import NONE_LABEL, VOCAB, label_key
from ..maps.loaders import load_mixedwm38, load_wm811k
from ..maps.render import render_array
from ..plots import confusion
from ..runner.runs import RUN_PREFIX, atomic_target, atomic_write_text, read_manifest, write_json
from . import views
from .answers import is_mixed, parse_labels, statement_end
from .classification import exact_matches
from .model_info import ModelInfo, read_info

log = logging.getLogger("wafersage.score")
METRICS_FILE = "metrics.json"


def resolve_model(path: str | Path) -> tuple[Path, str]:
    """(folder, kind): a merged model ('merged'), a LoRA adapter ('adapter'), or a run folder's SFT model."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such model folder (expected an exported model, an adapter or a run folder)")
    if (p / "manifest.json").exists() and not (p / "config.json").exists():
        sft = read_manifest(p).get("05_sft", {}).get("sft")
        if not sft:
            raise LookupError(f"{p}/manifest.json: stage 05 has published no SFT model; run stage 05 first")
        p = p / sft[len(RUN_PREFIX):] if sft.startswith(RUN_PREFIX) else Path(sft)
    if (p / "adapter_config.json").exists():
        return p, "adapter"
    if (p / "config.json").exists():
        return p, "merged"
    raise FileNotFoundError(f"{p}: neither a model (config.json) nor an adapter (adapter_config.json)")


def load_labelled(path: str | Path, max_maps: int = 0, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """(maps with labels, unlabelled rows skipped) from a WM-811K pickle or a MixedWM38 .npz. `max_maps` keeps
    a seeded random sample of the labelled maps (the class mix of the file, in expectation)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such data file")
    maps = load_mixedwm38(p) if p.suffix == ".npz" else load_wm811k(p, keep_unlabelled=True)
    labelled = maps["labels"].map(len) > 0
    skipped = int((~labelled).sum())
    maps = maps[labelled].reset_index(drop=True)
    if not len(maps):
        raise ValueError(f"{p}: no labelled maps ({skipped} unlabelled rows skipped)")
    if max_maps and len(maps) > max_maps:
        keep = np.sort(np.random.default_rng(seed).choice(len(maps), max_maps, replace=False))
        maps = maps.iloc[keep].reset_index(drop=True)
    return maps, skipped


class MapAsker:
    """A model asked its defect-type question about wafer maps, rendered as it was trained, greedily."""

    def __init__(self, folder: Path, kind: str, info: ModelInfo, device: str = "", drop_finished: bool = True,
                 batched_vision: bool = True):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        self.info, self.device = info, device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.drop_finished = drop_finished  # each answer leaves its batch when it ends (:mod:`..chat.decoding`)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        if kind == "adapter":
            from peft import PeftModel
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path", "")
            try:
                model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
            except OSError as exc:
                raise FileNotFoundError(f"{folder}: the adapter's base model {base!r} cannot be loaded ({exc}); "
                                        "score the merged folder instead") from exc
            model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
            has_tokenizer = (folder / "tokenizer_config.json").exists()
            self.processor = AutoProcessor.from_pretrained(str(folder) if has_tokenizer else base)
        else:
            model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype)
            self.processor = AutoProcessor.from_pretrained(str(folder))
        self.processor.tokenizer.padding_side = "left"
        self.model = model.to(self.device).eval()
        if batched_vision:  # same-size pictures attend in one call per layer (the same outputs)
            batch_vision_attention(self.model)
        self.prompt = self.processor.apply_chat_template(info.messages(), add_generation_prompt=True, tokenize=False)
        self.lut = np.array(info.palette_rgb(), np.uint8)
        self._breaks = None

    def breaks(self):
        """A bool per token id: does the token's text hold a character that can end a sentence."""
        import torch
        if self._breaks is None:
            n = max(len(self.processor.tokenizer), int(self.model.config.get_text_config().vocab_size))
            texts = self.processor.tokenizer.batch_decode([[i] for i in range(n)])
            self._breaks = torch.tensor([any(c in t for c in ".!?\n") for t in texts], dtype=torch.bool)
        return self._breaks

    def image(self, m: np.ndarray):
        from PIL import Image
        return Image.fromarray(render_array(m, self.info.image_size, self.lut))

    def ask_views(self, maps: list[np.ndarray], batch_size: int = 128, progress: bool = True, desc: str = "score",
                  full_answers: bool = False, settle: bool = False) -> list[list[str | None]]:
        """`answers[v][i]`: the greedy answer about map i shown in view v (:mod:`.views`), for each of the
        model's `info.views` views (view 0: the map as it is). A plain-style answer stops once the sentence
        that states its type is finished (:func:`.answers.statement_end`) and is cut there: the labels read from
        it are the labels the whole answer would give, at a fraction of the tokens. `full_answers` generates
        every answer to `max_new_tokens` (for reading the descriptions that follow). `settle` asks a view only
        about the maps whose vote the views before it have not settled (:func:`.views.settled`); the others'
        entries are None."""
        n_views = views.check_views(self.info.views)
        out: list[list[str | None]] = []
        bar = tqdm(total=len(maps) * n_views, desc=desc, unit="map" if n_views == 1 else "view", disable=not progress,
                   mininterval=2.0)
        so_far: list[list[list[str]]] = [[] for _ in maps]  # labels each map's asked views gave
        for k in range(n_views):
            todo = [i for i in range(len(maps)) if not (settle and k and views.settled(so_far[i], n_views))]
            got: list[str | None] = [None] * len(maps)
            shown = views.view_maps([maps[i] for i in todo], k)
            for s in range(0, len(shown), max(1, batch_size)):
                chunk = shown[s: s + batch_size]
                for i, a in zip(todo[s: s + batch_size], self._generate(chunk, full_answers)):
                    got[i] = a
                    if settle:
                        so_far[i].append(parse_labels(a))
                bar.update(len(chunk))
            bar.update(len(maps) - len(todo))
            out.append(got)
        bar.close()
        return out

    def _generate(self, images: list[np.ndarray], full_answers: bool) -> list[str]:
        """The greedy answers about one batch of maps, each cut after its type statement unless `full_answers`."""
        import torch
        stop = not full_answers and self.info.answer_style == "plain"
        inputs = self.processor(text=[self.prompt] * len(images), images=[self.image(m) for m in images],
                                padding=True, return_tensors="pt").to(self.device)
        n_prompt = inputs["input_ids"].shape[1]
        criteria = [_statement_stopper(self.processor.tokenizer, n_prompt, self.breaks())] if stop else None
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.info.max_new_tokens, do_sample=False,
                                      stopping_criteria=criteria,
                                      custom_generate=greedy_dropping_finished if self.drop_finished else None)
        answers = self.processor.batch_decode(ids[:, n_prompt:], skip_special_tokens=True)
        ends = [statement_end(a) if stop else None for a in answers]
        return [(a if end is None else a[:end]).strip() for a, end in zip(answers, ends)]

    def ask(self, maps: list[np.ndarray], batch_size: int = 128, progress: bool = True, desc: str = "score",
            full_answers: bool = False) -> list[str]:
        """One answer per map: its greedy answer (:meth:`ask_views`), or with several views the answer of the
        view that wins the vote (:func:`.views.voted`), each view asked only while the vote is open."""
        per_view = self.ask_views(maps, batch_size, progress, desc, full_answers, settle=True)
        if len(per_view) == 1:
            return per_view[0]
        _, winner, _ = views.voted([[_labels(a) for a in v] for v in per_view], len(per_view))
        return [per_view[w][i] for i, w in enumerate(winner)]


def _labels(answer: str | None) -> list[str] | None:
    """The labels an answer names; None for a view not asked (its map's vote settled before it)."""
    return None if answer is None else parse_labels(answer)


def _statement_stopper(tokenizer, n_prompt: int, breaks):
    """A stopping criterion that marks each answer of a generation batch finished once its type statement
    is (:func:`.answers.statement_end`). It judges each row from its own tokens and keeps no state between
    steps, so the decoder may drop finished rows from the batch (:mod:`..chat.decoding`). A sentence can only
    end at a token holding '.', '!', '?' or a newline or just after one (`breaks`, a bool per token id), so
    only those answers are decoded and looked at."""
    import torch
    from transformers import StoppingCriteria

    class StatementStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            recent = input_ids[:, max(n_prompt, input_ids.shape[1] - 2):]
            near = breaks.to(input_ids.device)[recent.clamp(max=len(breaks) - 1)].any(dim=1)
            for i in near.nonzero().flatten().tolist():
                text = tokenizer.decode(input_ids[i, n_prompt:], skip_special_tokens=True)
                done[i] = statement_end(text) is not None
            return done

    return StatementStop()


def predicted_labels(folder: str | Path, info: ModelInfo, maps: pd.DataFrame, batch_size: int = 128,
                     desc: str = "score") -> list[list[str]]:
    """The labels a merged model's answers name for each map, asked as `info` says (one model in memory)."""
    asker = MapAsker(resolve_model(folder)[0], "merged", info)
    return [parse_labels(a) for a in asker.ask(list(maps["wafer_map"]), batch_size, desc=desc)]


def _binary(labels: list[list[str]], vocab) -> np.ndarray:
    return np.array([[v in set(x) for v in vocab] for x in labels], bool).reshape(len(labels), len(vocab))


def bootstrap_scores(true: list[list[str]], pred: list[list[str]], n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Point values and percentile intervals of accuracy, macro-F1 (labels in the truth), pattern macro-F1 and
    per-label precision / recall / F1, from resampling maps with replacement (counts weighted per resample).
    Accuracy resamples all maps at once; the per-label measures and their macro-averages resample the maps of
    each true label set among themselves, so that every class is scored in every resample (a class of three
    maps would be absent from 5% of plain resamples)."""
    vocab = list(VOCAB)
    yt, yp = _binary(true, vocab), _binary(pred, vocab)
    right = exact_matches(true, pred).astype(float)
    tp, fp, fn = (yt & yp).astype(float), (~yt & yp).astype(float), (yt & ~yp).astype(float)
    present = yt.any(axis=0)
    patterns = present & np.array([v != NONE_LABEL for v in vocab])
    n = len(true)

    def stats(w: np.ndarray) -> dict:  # w: (R, n) weights of each map in each resample (the point: ones)
        TP, FP, FN = w @ tp, w @ fp, w @ fn
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(TP + FP > 0, TP / (TP + FP), 0.0)
            rec = np.where(TP + FN > 0, TP / (TP + FN), np.nan)
            f1 = np.where(2 * TP + FP + FN > 0, 2 * TP / (2 * TP + FP + FN), 0.0)
        return {"accuracy": (w @ right) / w.sum(axis=1), "macro_f1": f1[:, present].mean(axis=1),
                "pattern_macro_f1": f1[:, patterns].mean(axis=1) if patterns.any() else np.full(len(w), np.nan),
                "precision": prec, "recall": rec, "f1": f1}

    point = {k: v[0] for k, v in stats(np.ones((1, n))).items()}
    rng = np.random.default_rng(seed)
    _, stratum = np.unique([label_key(t) for t in true], return_inverse=True)
    pools = [np.flatnonzero(stratum == s) for s in range(stratum.max() + 1)] if n else []

    def weights(r: int, pool_list) -> np.ndarray:  # (r, n) draw counts, each pool resampled within itself
        w = np.zeros((r, n))
        for pool in pool_list:
            m = len(pool)
            flat = (rng.integers(0, m, (r, m)) + m * np.arange(r)[:, None]).ravel()
            w[:, pool] = np.bincount(flat, minlength=r * m).reshape(r, m)
        return w
    draws: dict[str, list] = {k: [] for k in point}
    for start in range(0, n_resamples, 100):
        r = min(100, n_resamples - start)
        plain, strat = stats(weights(r, [np.arange(n)])), stats(weights(r, pools))
        for k, got in draws.items():
            got.append(plain[k] if k == "accuracy" else strat[k])
    a = (1 - level) / 2
    with warnings.catch_warnings():  # recall of a label no resampled map has is undefined (NaN), as at the point
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = {k: np.nanquantile(np.concatenate(v), a, axis=0) for k, v in draws.items()}
        hi = {k: np.nanquantile(np.concatenate(v), 1 - a, axis=0) for k, v in draws.items()}
    out = {}
    for k in ("accuracy", "macro_f1", "pattern_macro_f1"):
        out |= {k: float(point[k]), f"{k}_ci_low": float(lo[k]), f"{k}_ci_high": float(hi[k])}
    rows = []
    for j, lab in enumerate(vocab):
        if present[j] or yp[:, j].any():
            rows.append({"label": lab, "support": int(yt[:, j].sum()), "predicted": int(yp[:, j].sum()),
                         **{f"{s}{suffix}": float(d[j]) for s in ("precision", "recall", "f1")
                            for suffix, d in (("", point[s]), ("_ci_low", lo[s]), ("_ci_high", hi[s]))}})
    out["per_class"] = pd.DataFrame(rows)
    return out


def confusion_figure(true_keys: list[str], pred_keys: list[str], title: str):
    """Row-normalised confusion of the 12 commonest true label sets (answers outside them as they are)."""
    top = pd.Series(true_keys).value_counts().index[:12].tolist()
    keep = [i for i, t in enumerate(true_keys) if t in top]
    shown = [pred_keys[i] if pred_keys[i] in top else ("(no label)" if not pred_keys[i] else "(other)") for i in keep]
    labels = [*top, *[x for x in ("(other)", "(no label)") if x in shown]]
    return confusion([true_keys[i] for i in keep], shown, labels, title)


def score_maps(asker: MapAsker, maps: pd.DataFrame, batch_size: int = 128, progress: bool = True,
               n_bootstrap: int = 1000, seed: int = 0, full_answers: bool = False
               ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(metrics, per-class table, per-map table) of a model on labelled maps (columns id, wafer_map, labels)."""
    t0 = time.perf_counter()
    per_view = asker.ask_views(list(maps["wafer_map"]), batch_size, progress, full_answers=full_answers, settle=True)
    seconds = time.perf_counter() - t0
    true = [list(x) for x in maps["labels"]]
    pred, winner, agree = views.voted([[_labels(a) for a in v] for v in per_view], len(per_view))
    answers = [per_view[w][i] for i, w in enumerate(winner)]
    asked = np.array([sum(v[i] is not None for v in per_view) for i in range(len(maps))], int)
    b = bootstrap_scores(true, pred, n_bootstrap, seed)
    mixed = np.array([is_mixed(t) for t in true], bool)
    right = exact_matches(true, pred)
    per_class = b.pop("per_class")
    metrics = {**b, "n_maps": len(maps), "maps_per_second": len(maps) / seconds if seconds > 0 else None,
               "seconds": seconds, "unparsed_share": float(np.mean([not p for p in pred])),
               "answers": "whole" if full_answers or asker.info.answer_style != "plain" else "to the type statement",
               "views": len(per_view), "n_mixed": int(mixed.sum()),
               **({"views_asked_per_map": float(asked.mean())} if len(per_view) > 1 else {}),
               "accuracy_single": float(right[~mixed].mean()) if (~mixed).any() else None,
               "accuracy_mixed": float(right[mixed].mean()) if mixed.any() else None}
    if mixed.any():
        metrics["exact_match"] = metrics["accuracy"]
    else:
        metrics.pop("pattern_macro_f1_ci_low"), metrics.pop("pattern_macro_f1_ci_high")
        metrics.pop("pattern_macro_f1")
    metrics |= {f"per_class/{r['label']}/{s}": r[s] for r in per_class.to_dict("records")
                for s in ("precision", "recall", "f1", "support")}
    per_map = pd.DataFrame({"id": maps["id"], "true": [label_key(t) for t in true],
                            "predicted": [label_key(p) for p in pred], "correct": right, "answer": answers})
    if len(per_view) > 1:
        per_map["views_asked"] = asked  # the views the map was asked in: the vote stops once it is settled
        per_map["views_agreeing"] = agree  # of the views asked, how many named the predicted labels
        per_map["answer_view"] = winner  # the view whose answer is shown (0: the map as it is, whenever it agrees)
    return metrics, per_class, per_map


PER_MAP_FILE = "per_map.csv.gz"  # one row per map; compressed: the answers repeat (5.4 MB -> a few hundred KB)


def write_outputs(out: Path, metrics: dict, per_class: pd.DataFrame, per_map: pd.DataFrame, title: str) -> None:
    """metrics.json, per_class.csv, per_map.csv.gz and confusion.png in `out`."""
    import matplotlib.pyplot as plt
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / METRICS_FILE, metrics)
    atomic_write_text(out / "per_class.csv", per_class.to_csv(index=False))
    with atomic_target(out / PER_MAP_FILE) as tmp:
        per_map.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0})  # mtime 0: same bytes each run
    fig = confusion_figure(list(per_map["true"]), list(per_map["predicted"]), title)
    fig.savefig(out / "confusion.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def score_loaded(folder: Path, kind: str, maps: pd.DataFrame, skipped: int, data: str | Path,
                 out: str | Path | None = None, batch_size: int = 128, progress: bool = True,
                 n_bootstrap: int = 1000, seed: int = 0, device: str = "", max_maps: int = 0,
                 full_answers: bool = False, record_paths=str, views_override: int | None = None) -> dict:
    """:func:`score` on maps already loaded (:func:`load_labelled`). `record_paths` turns the model folder and
    the data file into the strings metrics.json records (the pipeline's: relative to the project root).
    `views_override` asks in that many views instead of the model's own `views` (wafersage.json)."""
    info = read_info(folder)
    if views_override is not None:
        info = replace(info, views=views.check_views(views_override, "views"))
    log.info("scoring %s (%s) on %d maps of %s", folder, kind, len(maps), data)
    asker = MapAsker(folder, kind, info, device)
    metrics, per_class, per_map = score_maps(asker, maps, batch_size, progress, n_bootstrap, seed, full_answers)
    metrics = {**metrics, "n_unlabelled_skipped": skipped, "model": record_paths(folder), "model_kind": kind,
               "data": record_paths(data), "max_maps": max_maps, "seed": seed, "device": asker.device,
               "model_info": asdict(info)}
    if out is not None:
        write_outputs(Path(out), metrics, per_class, per_map,
                      f"{Path(str(data)).name}: {len(maps)} maps, accuracy {metrics['accuracy']:.3f}, "
                      f"macro-F1 {metrics['macro_f1']:.3f}")
    return {**metrics, "_per_class": per_class, "_per_map": per_map}


def score(model: str | Path, data: str | Path, out: str | Path | None = None, max_maps: int = 0,
          batch_size: int = 128, progress: bool = True, n_bootstrap: int = 1000, seed: int = 0,
          device: str = "", full_answers: bool = False, views_override: int | None = None) -> dict:
    """Score MODEL on the labelled maps of DATA; with `out`, write metrics.json, per_class.csv, per_map.csv.gz
    and confusion.png there. Returns the metrics (the per-class and per-map tables under '_per_class', '_per_map').
    Answers stop after the sentence that states the type unless `full_answers` (:meth:`MapAsker.ask`)."""
    folder, kind = resolve_model(model)
    read_info(folder)  # refuse a folder without its metadata before loading any data
    maps, skipped = load_labelled(data, max_maps, seed)
    return score_loaded(folder, kind, maps, skipped, data, out, batch_size, progress, n_bootstrap, seed, device,
                        max_maps, full_answers, views_override=views_override)

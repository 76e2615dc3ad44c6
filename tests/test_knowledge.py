"""The root-cause knowledge base loads, and a bad edit is named by file, pattern and field."""
import pytest
import yaml

from wafersage_utils.corpus.knowledge import DEFAULT_KB, load_knowledge
from wafersage_utils.maps.conventions import VOCAB


def test_default_knowledge_base_covers_the_vocabulary():
    kb = load_knowledge()
    assert list(kb) == list(VOCAB)
    assert any("scratch" in c.lower() or "handling" in c.lower() for c in kb["Scratch"].candidate_causes)
    assert kb["none"].candidate_causes == []


def _edited(tmp_path, edit):
    raw = yaml.safe_load(DEFAULT_KB.read_text())
    edit(raw)
    path = tmp_path / "kb.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("Donut"), r"missing \['Donut'\]"),
    (lambda r: r.update(Ring=r["Donut"]), r"unknown \['Ring'\]"),
    (lambda r: r["Loc"].update(candidate_causes="particles"), r"pattern 'Loc', field 'candidate_causes'"),
    (lambda r: r["Loc"].update(colour=["red"]), r"pattern 'Loc', field 'colour'"),
    (lambda r: r["Scratch"].update(contradicting_causes=r["Scratch"]["candidate_causes"][:1]), r"both candidate and contradicting"),
    (lambda r: r["Center"].update(candidate_causes=[]), r"pattern 'Center', field 'candidate_causes': needs"),
])
def test_bad_edits_are_named(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        load_knowledge(_edited(tmp_path, edit))

"""The described corpus: the grounded teacher, the knowledge base, rubrics and the rule score, hallucination checks,
VQA synthesis and its exports (stages 02 to 04)."""

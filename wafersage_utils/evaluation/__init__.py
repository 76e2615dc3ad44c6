"""Evaluation: reading answers, model inference on VQA rows, judges, rule-score alignment, statistics, the error
taxonomy, the classification view and the write-up (stages 05 to 07)."""

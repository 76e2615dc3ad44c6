"""Wafer maps: conventions, the common table and its loaders, the generator, features, measured facts, rendering,
label cleaning and splits (stage 01, and the facts every later stage stands on)."""

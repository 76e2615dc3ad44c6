"""The runner: params files checked against the notebooks, run folders, and the papermill pipeline."""

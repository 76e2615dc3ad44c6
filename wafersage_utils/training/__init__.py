"""Training: the tiny Qwen3-VL and the model factory, encoded batches, LoRA SFT (stage 05), rewards and GSPO
(stage 06)."""

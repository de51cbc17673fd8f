"""Evaluation: per-domain perplexity, zero/few-shot priming on a task registry, fine-tuning."""

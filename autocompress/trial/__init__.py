"""One trial: a policy applied to a copy of the baseline, fine-tuned and measured."""

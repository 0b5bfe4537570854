"""Supervised fine-tuning of a pretrained encoder: classifier, optimiser groups, mixing, data, the loop."""

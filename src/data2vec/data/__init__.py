"""Data: sources, transforms, samplers and loaders per modality."""

"""Neural network building blocks: the shared Transformer and the modality front-ends."""

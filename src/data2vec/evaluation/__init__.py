"""Evaluation shared by every modality: probes of frozen features, classifier metrics, scoring a classifier."""

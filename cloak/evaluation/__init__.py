"""Evaluation protocol: platform transforms, identity datasets and tracker metrics (FaceCure, LowKey)."""

"""Trackers that fight back: fine-tuning on cloaked photos, purification, detecting cloaked photos,
and the adaptive experiment with its results and report."""

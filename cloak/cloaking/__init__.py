"""The engine behind ``cloak.protect``: faces grouped into jobs on windows of their photos,
large faces cloaked on a shrunk copy, every job attacked in one batch and pasted back."""

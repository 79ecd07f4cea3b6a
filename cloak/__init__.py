"""cloak: adversarial face cloaks for shared photos, with honest measurements of how well they work."""

from cloak.protect import PhotoReport, Protected, protect

__all__ = ["PhotoReport", "Protected", "protect"]

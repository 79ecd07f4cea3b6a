"""cloak: adversarial face cloaks with honest measurements."""

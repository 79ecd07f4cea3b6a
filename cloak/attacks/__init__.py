"""Cloaking attacks: one module per attack on the shared loop in :mod:`cloak.attacks.base`."""

from cloak.attacks.base import Attack, CloakResult
from cloak.attacks.fawkes import Fawkes
from cloak.attacks.lowkey import LowKey
from cloak.attacks.pgd import PGD
from cloak.attacks.regions import PhotoFaces, photo_seed

__all__ = ["PGD", "Attack", "CloakResult", "Fawkes", "LowKey", "PhotoFaces", "photo_seed"]

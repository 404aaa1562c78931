"""Moved to cqt.venues.coinglass.parse; kept only for checks/coinglass.py's import."""
from ..venues.coinglass.parse import COINGLASS_ENDPOINTS

__all__ = ["COINGLASS_ENDPOINTS"]

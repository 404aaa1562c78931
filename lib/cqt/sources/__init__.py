"""Moved to cqt.venues (one package per venue). Kept only while checks/coinglass.py still
imports `cqt.sources.coinglass`; remove with that import."""

"""cqt: collect crypto market data into SQLite and turn it into leak-free ML datasets."""

__version__ = "0.1.0"

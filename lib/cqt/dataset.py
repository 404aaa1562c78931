"""Old path of cqt-export's entry (cqt.cli.PROGRAMS); the export lives in cqt.export."""
from .export.cli import main  # noqa: F401 - until PROGRAMS names cqt.export.cli:main

"""The dashboard page (a Streamlit script): six panels, each refreshing itself every few seconds.

Run by `bin/cqt-dashboard` (through app.py); the database and the symbols come from the settings
(CQT_DB, which the program's --db sets, and CQT_SYMBOLS).
"""
from __future__ import annotations

import streamlit as st

from cqt.config import ConfigError, load_settings
from cqt.dashboard import panels

# Seconds between redraws of each panel: freshness first, the heavier panels less often (one open
# tab then costs a few % of one core).
REFRESH_S = {"checks": 10, "services": 5, "streams": 5, "ingest": 10, "exports": 30, "prices": 15}

st.set_page_config(page_title="cqt", layout="wide")
st.title("cqt")

try:
    settings = load_settings()
except ConfigError as exc:
    st.error(f"configuration error: {exc}")
    st.stop()

st.caption(f"database {settings.db} · symbols {', '.join(settings.assets)} · panels redraw every "
           f"{min(REFRESH_S.values())}-{max(REFRESH_S.values())} s · /healthz tells whether the pipeline is healthy")

# One panel under the other: their tables are wide, and the order is the order of questions.
for name in ("checks", "streams", "services", "ingest", "prices", "exports"):
    with st.container():
        st.fragment(run_every=REFRESH_S[name])(getattr(panels, f"panel_{name}"))(settings)

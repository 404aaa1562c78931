"""The dashboard page (a Streamlit script): six panels, each refreshing itself every few seconds.

Run by `bin/cqt-dashboard` (through app.py); the database and the symbols come from the settings
(CQT_DB, which the program's --db sets, and CQT_SYMBOLS).
"""
from __future__ import annotations

import streamlit as st

from cqt.config import ConfigError, load_settings
from cqt.dashboard import panels

REFRESH_S = 5

st.set_page_config(page_title="cqt", layout="wide")
st.title("cqt")

try:
    settings = load_settings()
except ConfigError as exc:
    st.error(f"configuration error: {exc}")
    st.stop()

st.caption(f"database {settings.db} · symbols {', '.join(settings.assets)} · refreshed every {REFRESH_S} s · "
           "/healthz tells whether the pipeline is healthy")

left, right = st.columns(2)
for where, draw in ((left, panels.panel_checks), (right, panels.panel_services), (st, panels.panel_streams),
                    (left, panels.panel_ingest), (right, panels.panel_exports), (st, panels.panel_prices)):
    with where.container():
        st.fragment(run_every=REFRESH_S)(draw)(settings)

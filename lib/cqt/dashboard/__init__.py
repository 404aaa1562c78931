"""The operator's dashboard (program cqt-dashboard): six panels over the database, read-only, and
GET /healthz, the truthful health answer (Streamlit's /_stcore/health is liveness only)."""

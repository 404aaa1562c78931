"""The dashboard's ASGI app: the page plus GET /healthz (Streamlit itself answers any other path
with the page's HTML and 200, and /_stcore/health with 200 even when the page fails)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cqt.config import load_settings
from cqt.dashboard import health

PAGE = Path(__file__).resolve().parent / "page.py"
SETTINGS = load_settings()   # the program checked them before starting the server


async def healthz(request: Request) -> JSONResponse:
    code, body = await run_in_threadpool(health.decide, SETTINGS)
    return JSONResponse(body, status_code=code, headers={"Cache-Control": "no-store"})


app = st.App(str(PAGE), routes=[Route("/healthz", healthz, methods=["GET", "HEAD"])])

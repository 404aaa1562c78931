"""Pure: what a failed answer or connection means, and what the operator should change.

Every probe FAIL line ends with these two parts, so each known failure (a refused location,
a ban, a rate limit, a rejected key, an untrusted certificate, a wrong URL) reads as a cause
and a fix rather than a status code.
"""
from __future__ import annotations

URL_VARS = {"upbit": ("CQT_UPBIT_REST_URL", "CQT_UPBIT_WS_URL"),
            "binance": ("CQT_BINANCE_REST_URL", "CQT_BINANCE_WS_URL"),
            "coinglass": ("CQT_COINGLASS_URL", "CQT_COINGLASS_URL")}


def explain_status(source: str, status: int, retry_after: str | None = None, server_msg: str = "") -> tuple[str, str]:
    """(cause, fix) of an HTTP error status from `source`'s REST API or WebSocket handshake."""
    said = f" ({server_msg[:120]})" if server_msg else ""
    if status == 451:
        return ("http 451: the venue refuses this host's location (restricted location)",
                "run cqt from a permitted region; no cqt setting fixes it")
    if status == 418:
        wait = f" for {retry_after} s" if retry_after else ""
        return (f"http 418: this IP is banned{wait} after too many requests",
                "stop every other client using this IP's request weight, then wait for the ban to end")
    if status == 429:
        wait = f"; Retry-After {retry_after} s" if retry_after else ""
        return (f"http 429: rate limited{wait}",
                "another program on this IP (or a running cqt service) is using the budget; probe again later")
    if source == "coinglass" and status in (400, 401, 403):
        return (f"http {status}: key rejected{said}", "check COINGLASS_API_KEY in .env (a key from your Coinglass "
                                                      "account's API page)")
    if status == 404:
        rest_var, _ = URL_VARS.get(source, ("the URL", ""))
        return (f"http 404: no such endpoint{said}", f"check {rest_var} (base URL only, no path)")
    if status >= 500:
        return (f"http {status}: the venue had an error{said}", "probe again later; nothing to change here")
    return (f"http {status}{said}", "see the server's message")


def explain_error(source: str, error: str, ws: bool = False) -> tuple[str, str]:
    """(cause, fix) of a request or connection that got no HTTP answer (RestClient error text or
    a websocket-client exception's text)."""
    rest_var, ws_var = URL_VARS.get(source, ("the URL", "the URL"))
    var = ws_var if ws else rest_var
    low = error.lower()
    if "certificate" in low or "tls" in low or "ssl" in low:
        return (f"tls: {error[:160]}", "set CQT_CA_BUNDLE to the CA that issued the server's certificate "
                                       "(a proxy or private endpoint), or update ca-certificates")
    if "refused" in low:
        return (f"connection refused ({error[:120]})", f"check {var} (host and port) and that the service is up")
    if "timed out" in low or "timeout" in low:
        return (f"no answer in time ({error[:120]})", f"check {var}, the network and any firewall or proxy")
    if "name or service not known" in low or "resolve" in low or "getaddrinfo" in low or "nodename" in low:
        return (f"host name not found ({error[:120]})", f"check {var} and this host's DNS")
    return (error[:200] or "no answer", f"check {var} and the network")

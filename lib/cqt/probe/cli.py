"""`cqt probe`: every stream and REST endpoint cqt uses, tried once from this host.

Exit 0 every item OK, 1 any FAIL, 78 bad settings. The key is sent, never printed.
"""
from __future__ import annotations

import json
import logging
import sys
import threading

import click

from .. import exitcodes
from ..collector import config_or_exit
from ..config import ConfigError
from ..options import json_option
from ..rest import RestClient
from ..runtime import load_settings_or_exit
from ..venues.binance.collect import BinanceConfig, canonical_stream, endpoints as binance_endpoints
from ..venues.coinglass.poll import CoinglassConfig
from ..venues.upbit.collect import UpbitConfig, endpoint as upbit_endpoint
from .calls import Call, binance_calls, coinglass_calls, probe_call, stops_venue, upbit_calls
from .result import Item
from .streams import probe_endpoint

SOURCES = ("upbit", "binance", "coinglass")
UPBIT_TYPES = ("trade", "orderbook", "ticker")
RARE_KINDS = ("forceOrder",)          # liquidations: minutes may pass without one


def stream_plans(settings, sources) -> list[tuple[str, object, object, list[str], list[str]]]:
    """(source, endpoint, loop settings, expected streams, rare streams) per WebSocket endpoint."""
    plans = []
    if "upbit" in sources:
        cfg = UpbitConfig.from_settings(settings)
        expected = [f"{code}@{t}" for code in cfg.codes for t in UPBIT_TYPES]
        plans.append(("upbit", upbit_endpoint(cfg), cfg.loop, expected, []))
    if "binance" in sources:
        cfg = BinanceConfig.from_settings(settings)
        for ep in binance_endpoints(cfg):
            expected = [canonical_stream(w) for w in ep.url.split("streams=", 1)[1].split("/")]
            plans.append(("binance", ep, cfg.loop, expected, [s for s in expected if s.split("@")[1] in RARE_KINDS]))
    return plans


def rest_plans(settings, sources, cg_cfg) -> list[tuple[str, str, dict, list[Call]]]:
    """(source, base URL, extra headers, calls) per venue."""
    plans = []
    if "upbit" in sources:
        plans.append(("upbit", settings.upbit_rest_url, {}, upbit_calls(tuple(settings.upbit_codes))))
    if "binance" in sources:
        plans.append(("binance", settings.binance_rest_url, {}, binance_calls(tuple(settings.binance_symbols))))
    if cg_cfg is not None:
        plans.append(("coinglass", settings.coinglass_url, {"CG-API-KEY": settings.coinglass_api_key},
                      coinglass_calls(cg_cfg)))
    return plans


def run_rest(settings, source: str, base: str, headers: dict, calls: list[Call], cg_cfg) -> list[Item]:
    client = RestClient(base, name=f"probe_{source}", timeout_s=settings.get_float("CQT_REST_TIMEOUT_S"),
                        headers=headers, secrets=settings.secrets, ca_bundle=settings.ca_bundle,
                        location_backoff_s=settings.get_float("CQT_REST_LOCATION_BACKOFF_S"))
    items: list[Item] = []
    stopped: Item | None = None
    try:
        for call in calls:
            if stopped is not None:
                items.append(Item(source, call.name, False, cause=f"not sent (after {stopped.cause.split(':')[0]})"))
                continue
            item = probe_call(client, call, settings, interval=cg_cfg.interval if cg_cfg else "",
                              plan=cg_cfg.plan if cg_cfg else None)
            items.append(item)
            if stops_venue(item):
                stopped = item
    finally:
        client.close()
    return items


def coinglass_config(settings, sources, explicit: bool):
    """The poller's Coinglass settings, or None when Coinglass is off and was not asked for."""
    if "coinglass" not in sources:
        return None
    if not settings.coinglass_enabled and not explicit:
        click.echo("skip coinglass: COINGLASS_ENABLED is not true (probe it with --source coinglass)", err=True)
        return None
    return config_or_exit(lambda: CoinglassConfig.from_settings(settings), "cqt probe")


@click.command(name="probe", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--source", "sources", multiple=True, type=click.Choice(SOURCES),
              help="Probe only this venue (repeatable). Default: all (Coinglass when COINGLASS_ENABLED).")
@click.option("--seconds", default=15.0, show_default=True, type=click.FloatRange(1, 600),
              help="How long each WebSocket connection receives.")
@json_option(help="Print one JSON object (items, exit code) instead of lines.")
def probe(sources, seconds, as_json):
    """Try every stream and REST endpoint cqt uses, with the configured URLs and key.

    One line per item: OK/FAIL, frames or answers seen, rows the real parsers made,
    rejects, latency; a FAIL names the cause and what to change. Exit 0 all OK,
    1 any FAIL, 78 bad settings. Run it before a long run (docs/probe.md)."""
    settings = load_settings_or_exit()
    for name in ("cqt.rest", "cqt.stream"):       # the lines below say it all, once per item
        logging.getLogger(name).disabled = True
    chosen = tuple(sources) or SOURCES
    try:
        cg_cfg = coinglass_config(settings, chosen, explicit=bool(sources))
        ws_plans = stream_plans(settings, chosen)
        http_plans = rest_plans(settings, chosen, cg_cfg)
        settings.get_float("CQT_REST_TIMEOUT_S")
    except ConfigError as exc:
        click.echo(f"cqt probe: {exc}", err=True)
        sys.exit(exitcodes.CONFIG)
    results: dict[int, list[Item]] = {}

    def run(i: int, fn, *args) -> None:
        try:
            results[i] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - a probe bug is one FAIL line, never a traceback
            results[i] = [Item(str(args[0]), "probe", False, cause=f"probe error: {type(exc).__name__}: {exc}",
                               fix="report it")]

    threads = []
    for i, (source, ep, loop_cfg, expected, rare) in enumerate(ws_plans):
        threads.append(threading.Thread(target=run, args=(i, probe_endpoint, source, ep, loop_cfg, seconds,
                                                          expected, rare), daemon=True, name=f"probe-{ep.name}"))
    for j, (source, base, headers, calls) in enumerate(http_plans, start=len(ws_plans)):
        threads.append(threading.Thread(target=run, args=(j, run_rest, settings, source, base, headers, calls,
                                                          cg_cfg), daemon=True, name=f"probe-{source}-rest"))
    click.echo(f"probing {', '.join(s for s in chosen if s != 'coinglass' or cg_cfg)} for {seconds:g} s ...",
               err=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)          # a REST call is bounded by its timeout; a stuck one is a FAIL below
    items = []
    for i in range(len(threads)):
        items.extend(results.get(i) or [Item("probe", threads[i].name, False, cause="did not finish in time",
                                             fix="check the network; probe again")])
    order = {s: k for k, s in enumerate(SOURCES)}
    items.sort(key=lambda it: order.get(it.source, 9))     # stable: per venue, streams then REST
    code = exitcodes.OK if items and all(it.ok for it in items) else exitcodes.FAIL
    if as_json:
        click.echo(json.dumps({"exit_code": code, "items": [it.as_dict() for it in items]}, sort_keys=True))
    else:
        for it in items:
            click.echo(it.line())
        failed = sum(not it.ok for it in items)
        click.echo(f"probe: {len(items) - failed} OK, {failed} FAIL")
    sys.exit(code)

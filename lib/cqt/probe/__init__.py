"""`cqt probe`: before a long run, does every stream and REST endpoint cqt uses work from
this host, with these settings and this key?

    result.py   one checked item (OK/FAIL, counts, latency, cause and fix) and its line
    explain.py  pure: a failed REST answer or connect error -> the cause in words and what to change
    streams.py  one WebSocket endpoint: connect, subscribe, receive, parse every frame
    calls.py    the REST calls of each venue, each made once and parsed by the real parser
    cli.py      the command: which sources, how long, the lines or JSON, the exit code
"""

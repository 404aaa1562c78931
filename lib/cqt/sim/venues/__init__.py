"""The venues cqt-sim stands in for, one package each (see docs/sim.md, "Adding a venue").

Each package holds that venue's wire: ``frames`` (WebSocket frames formatted from the
model's blocks; WebSocket venues only), ``rest`` (pure REST answers from the market,
error shapes, request weights) and ``protocol`` (the server side: WebSocket
endpoints and their protocol, limits and authentication, replay and fault hooks).
`cqt.sim.market` lists the frames and REST modules, `cqt.sim.server` the protocols.
"""

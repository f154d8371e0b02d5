"""Testbench helpers for ``amaranth.lib.stream`` interfaces in the Amaranth simulator.

Amaranth asks users to keep their own copies of these until it ships them. Every wait is bounded: a beat that never
comes fails the testbench with an :class:`AssertionError` instead of hanging it.
"""

__all__ = ["stream_put", "stream_get"]


async def stream_put(ctx, stream, payload, *, timeout=10_000):
    """Offer ``payload`` on ``stream`` (a dict for a struct payload) and wait until the sink takes it."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    for _ in range(timeout):
        _, _, ready = await ctx.tick().sample(stream.ready)
        if ready:
            ctx.set(stream.valid, 0)
            return
    raise AssertionError(f"{stream!r} did not accept a beat within {timeout} cycles")


async def stream_get(ctx, stream, *, timeout=10_000):
    """Wait for a beat on ``stream`` and take it; returns its payload."""
    ctx.set(stream.ready, 1)
    for _ in range(timeout):
        _, _, payload, valid = await ctx.tick().sample(stream.payload, stream.valid)
        if valid:
            ctx.set(stream.ready, 0)
            return payload
    raise AssertionError(f"no beat on {stream!r} within {timeout} cycles")

"""Which asyncio event loop HQ runs on: uvloop where it is installed (it cuts the loop's own
cost per call), else the standard one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of kind `name` ("uvloop" or "asyncio"); uvloop falls
    back to asyncio, with a warning, where it is not installed (Windows)."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; running on the standard asyncio loop")
            return asyncio.new_event_loop
        return uvloop.new_event_loop
    if name != "asyncio":
        raise ValueError(f"unknown event loop {name!r}")
    return asyncio.new_event_loop

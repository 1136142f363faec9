"""The DigitalOcean world (devkit/do_world.py) as a fixture serves it to the tests of one module or session."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from devkit.do_world import World


def serve_world(data_dir: Path, env: Mapping[str, str] | None = None, *, mode: str | None = None) -> Iterator[World]:
    """Yield a started world, then stop it; a bug the stand-in met while serving fails the fixture."""
    world = World.start(data_dir, env, mode=mode)
    yield world
    world.stop()
    assert world.stand_in.handler_errors == []

"""Key rotation with long-lived workers (WID_MODE=persistent, three uWSGI workers): every worker caches
the signing and verification keys, yet an emergency rotation is in force on each of them from its very
next request (lib/wid/store/keyring.py: the caches are keyed by the key set's generation), and a
scheduled rotation keeps its staged semantics.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import requests

from devkit.do_world import DATABASE_UUID, World
from tests.test_key_rotation import kid_of, time_passes_until_activation
from tests.test_persistent_mode import DROPLET_ROLE, exchange, until_every_worker


def read_database(world: World, token: str) -> requests.Response:
    return requests.get(f"{world.url}/v2/databases/{DATABASE_UUID}", timeout=30,
                        headers={"Authorization": f"Bearer {token}"})


def issued_by(kid: str) -> Callable[[requests.Response], None]:
    def check(response: requests.Response) -> None:
        assert response.status_code == 200, response.text
        assert kid_of(response.json()["token"]) == kid  # the key this worker signs with
    return check


def allowed(response: requests.Response) -> None:
    assert response.status_code == 200, response.text


def refused(response: requests.Response) -> None:
    assert response.status_code == 401, response.text
    assert "does not know (kid)" in response.json()["message"]


def active_kid(world: World) -> str:
    listed = map(json.loads, world.proxy.wid("keys", "list", "--json").stdout.splitlines())
    return next(str(key["kid"]) for key in listed if key["state"] == "active")


def test_an_emergency_rotation_is_in_force_on_every_worker_at_the_next_request(persistent_world: World) -> None:
    world = persistent_world
    team = world.connect_team("Emergency Team")
    world.stand_in.add_database(team.uuid, "backend", ["my-tag"], uuid=DATABASE_UUID)
    workload = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")
    compromised = kid_of(workload)
    role_token = exchange(world.url, workload, team.uuid).json()["token"]
    # Every worker verifies and signs with the key now, and caches it.
    until_every_worker(world.proxy, lambda: exchange(world.url, workload, team.uuid), issued_by(compromised))
    until_every_worker(world.proxy, lambda: read_database(world, role_token), allowed)

    output = world.proxy.wid("keys", "rotate", "--emergency").stdout
    assert f"key {compromised} is dropped" in output

    # What an attacker holding the compromised key minted is refused by every worker, on its first request.
    until_every_worker(world.proxy, lambda: exchange(world.url, workload, team.uuid), refused)
    until_every_worker(world.proxy, lambda: read_database(world, role_token), refused)
    # The new key verifies at once everywhere, and no worker signs with the dropped key any more.
    fresh = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")
    new = kid_of(fresh)
    assert new != compromised and new == active_kid(world)
    until_every_worker(world.proxy, lambda: exchange(world.url, fresh, team.uuid), issued_by(new))


def test_a_scheduled_rotation_stays_staged_on_every_worker(persistent_world: World) -> None:
    world = persistent_world
    team = world.connect_team("Scheduled Team")
    workload = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")
    old = kid_of(workload)
    until_every_worker(world.proxy, lambda: exchange(world.url, workload, team.uuid), issued_by(old))

    rotated = world.proxy.wid("keys", "rotate").stdout
    new = rotated.split()[1]
    assert "is published now and signs from" in rotated
    # Published, not signing: every worker still signs with the old key until activate_at.
    until_every_worker(world.proxy, lambda: exchange(world.url, workload, team.uuid), issued_by(old))

    with world.proxy.configured():
        from wid.store import storage

        time_passes_until_activation()
        # A worker's cache ends at the activate_at it read, which moving the row cannot change: the edit
        # bumps the generation as a rotation would.
        with storage.database().transaction() as tx:
            tx.execute("UPDATE key_generations SET generation = generation + 1 WHERE name = 'signing'")
    until_every_worker(world.proxy, lambda: exchange(world.url, workload, team.uuid), issued_by(new))

"""Create (or update) the command centre's Grafana login with the Viewer role.

Grafana cannot provision users from files, so the compose stack runs this once after Grafana is
healthy (service ``grafana-setup``). It is idempotent: a missing user is created, an existing
one gets the password from the environment again and is set back to Viewer, so the environment
stays the one source of truth. The command centre sees every board and can change none.

Environment (each ``*_PASSWORD`` may instead be given as ``*_PASSWORD_FILE``):
``GRAFANA_URL`` (default ``http://grafana:3000``), ``GRAFANA_ADMIN_USER`` (default ``admin``),
``GRAFANA_ADMIN_PASSWORD``, ``GRAFANA_VIEWER_LOGIN`` (default ``command-centre``),
``GRAFANA_VIEWER_PASSWORD``. Passwords are never printed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

VIEWER_ROLE = "Viewer"


class SetupError(RuntimeError):
    """A Grafana API call failed; the message names the call and Grafana's answer."""


def secret(env: Mapping[str, str], name: str) -> str:
    """``NAME`` or the content of the file ``NAME_FILE``; a clear error when neither is set."""
    value = env.get(name)
    if not value and env.get(f"{name}_FILE"):
        value = Path(env[f"{name}_FILE"]).read_text().rstrip("\r\n")
    if not value:
        raise SetupError(f"{name} (or {name}_FILE) must be set")
    return value


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.is_error:
        raise SetupError(f"{what}: HTTP {response.status_code}: {response.text[:200]}")
    return response


def ensure_viewer(client: httpx.Client, login: str, password: str, org_id: int = 1) -> str:
    """Make ``login`` a Viewer of ``org_id`` with ``password``; returns ``"created"`` or ``"updated"``."""
    found = client.get("/api/users/lookup", params={"loginOrEmail": login})
    if found.status_code == 404:
        body = {
            "name": "Command centre",
            "login": login,
            "email": f"{login}@localhost",
            "password": password,
            "OrgId": org_id,
        }
        user_id = _check(client.post("/api/admin/users", json=body), f"create user {login}").json()["id"]
        outcome = "created"
    else:
        user_id = _check(found, f"look up user {login}").json()["id"]
        _check(
            client.put(f"/api/admin/users/{user_id}/password", json={"password": password}),
            f"set password of {login}",
        )
        outcome = "updated"
    _check(
        client.patch(f"/api/orgs/{org_id}/users/{user_id}", json={"role": VIEWER_ROLE}),
        f"set role of {login} to {VIEWER_ROLE}",
    )
    return outcome


def main(env: Mapping[str, str] = os.environ) -> int:
    try:
        admin = (env.get("GRAFANA_ADMIN_USER") or "admin", secret(env, "GRAFANA_ADMIN_PASSWORD"))
        login = env.get("GRAFANA_VIEWER_LOGIN") or "command-centre"
        password = secret(env, "GRAFANA_VIEWER_PASSWORD")
        with httpx.Client(
            base_url=env.get("GRAFANA_URL") or "http://grafana:3000", auth=admin, timeout=10
        ) as client:
            outcome = ensure_viewer(client, login, password)
    except (SetupError, OSError, httpx.HTTPError) as exc:
        print(f"error: grafana viewer setup: {exc}", file=sys.stderr)
        return 1
    print(f"grafana: {outcome} {login} with role {VIEWER_ROLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

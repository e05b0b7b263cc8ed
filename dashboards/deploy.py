"""``backbone dashboards deploy``: push the generated boards to a running Grafana through grafana-client.

Idempotent: folders and boards have fixed uids, so a second deploy overwrites in place (no
duplicates, no orphaned copies). One Grafana folder per mission plus the command centre, as in
the provisioning file. Errors say what to do: a bad token (401), a token without the Editor role
(403), a Grafana too old for the board schema, or an unreachable URL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_GRAFANA_VERSION = (11, 0)
"""The generated JSON uses dashboard schemaVersion 41 (grafana-foundation-sdk 11.6 models)."""


class DeployError(RuntimeError):
    """The deploy could not finish; the message names the folder/board and the reason."""


@dataclass
class DeployReport:
    grafana_version: str
    folders_created: list[str] = field(default_factory=list)
    folders_updated: list[str] = field(default_factory=list)
    dashboards: list[str] = field(default_factory=list)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split("-")[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def _explain(exc: Exception, what: str, url: str) -> DeployError:
    from grafana_client.client import GrafanaException, GrafanaTimeoutError

    if isinstance(exc, GrafanaException):
        status = exc.status_code
        if status == 401:
            return DeployError(
                f"{what}: Grafana at {url} rejected the token (401 Unauthorized); "
                "pass a valid service-account token with --token"
            )
        if status == 403:
            return DeployError(
                f"{what}: the token is valid but not allowed to do this (403 Forbidden); "
                "give the service account the Editor (or Admin) role"
            )
        if isinstance(exc, GrafanaTimeoutError):
            return DeployError(f"{what}: Grafana at {url} did not answer in time")
        return DeployError(f"{what}: Grafana answered {status}: {exc.message}")
    return DeployError(f"{what}: cannot reach Grafana at {url}: {exc}")


def deploy(
    url: str,
    token: str,
    folders: dict[str, tuple[str, str]],
    boards: list[tuple[str, dict[str, Any]]],
    timeout_s: float = 10.0,
    log: Callable[[str], None] = lambda _: None,
) -> DeployReport:
    """Create/update ``folders`` (key → (uid, title)) and overwrite ``boards`` ((folder key, JSON)) by uid."""
    import niquests
    from grafana_client.api import GrafanaApi
    from grafana_client.client import GrafanaClientError, GrafanaException

    reachability = (GrafanaException, niquests.exceptions.RequestException, OSError)
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    try:
        health = api.health.check()
    except reachability as exc:
        raise _explain(exc, "health check", url) from exc
    version = str(health.get("version", "")) if isinstance(health, dict) else ""
    if not version:
        raise DeployError(f"health check: {url} did not report a Grafana version; is it a Grafana URL?")
    if _version_tuple(version)[:2] < MIN_GRAFANA_VERSION:
        need = ".".join(map(str, MIN_GRAFANA_VERSION))
        raise DeployError(
            f"Grafana {version} at {url} is too old for these boards (schemaVersion 41); "
            f"Grafana {need} or newer is required"
        )
    report = DeployReport(grafana_version=version)
    try:
        api.search.search_dashboards(limit=1)  # an authenticated call: fail early on a bad token
    except reachability as exc:
        raise _explain(exc, "authentication", url) from exc

    for key, (uid, title) in folders.items():
        try:
            try:
                existing = api.folder.get_folder(uid)
            except GrafanaClientError as exc:
                if exc.status_code != 404:
                    raise
                api.folder.create_folder(title, uid=uid)
                report.folders_created.append(uid)
                log(f"folder {uid} ({title}) created")
                continue
            if existing.get("title") != title:
                api.folder.update_folder(uid, title=title, overwrite=True)
            report.folders_updated.append(uid)
        except reachability as exc:
            raise _explain(exc, f"folder {key} ({uid})", url) from exc

    for key, board in boards:
        folder_uid = folders[key][0]
        body = {
            "dashboard": {**board, "id": None},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": "backbone dashboards deploy",
        }
        try:
            api.dashboard.update_dashboard(body)
        except reachability as exc:
            raise _explain(exc, f"dashboard {board.get('uid')} ({board.get('title')})", url) from exc
        report.dashboards.append(str(board.get("uid")))
        log(f"dashboard {board.get('uid')} -> folder {folder_uid}")
    return report


def committed_boards(grafana_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(folder key, board JSON) for every committed board file, folder key = its directory name."""
    return [(p.parent.name, json.loads(p.read_text())) for p in sorted(grafana_dir.glob("*/*.json"))]

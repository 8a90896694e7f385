"""The ClearML SDK as this project uses it: settings applied before any task exists, and
"is a server configured and reachable?" answered before anything is created.

Without the check the SDK falls back to ClearML's public demo server; we never want that.
"""

from __future__ import annotations

import os
import re

HOW_TO_CONFIGURE = (
    "configure a ClearML server first, one of:\n"
    "  - run `clearml-init` and paste the credentials from the web UI (Settings > Workspace)\n"
    "  - export CLEARML_API_HOST, CLEARML_WEB_HOST, CLEARML_FILES_HOST, "
    "CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY\n"
    "  - write ~/clearml.conf (or point CLEARML_CONFIG_FILE at one); "
    "see docker/clearml.conf.example"
)
OVERRIDES = {
    "sdk": {
        "development": {
            # Repository detection on a thread forks git while boto3 starts threads of its
            # own; that fork hung for minutes here, intermittently.
            "vcs_repo_detect_async": False,
            # Events through a subprocess cost every task ~10 s at exit, waiting for it.
            "report_use_subprocess": False,
        }
    }
}


class ServerNotConfigured(RuntimeError):
    pass


def prepare_sdk() -> None:
    """Applies OVERRIDES; call before the first Task in a process."""
    from clearml.config import ConfigSDKWrapper, ConfigWrapper

    ConfigWrapper.set_overrides(OVERRIDES)
    ConfigSDKWrapper.clear_config_impl()  # re-read the sdk section with the overrides


def connect(timeout: float = 5.0) -> str:
    """The SDK prepared and the server answering: what every server-side command needs."""
    prepare_sdk()
    return check_server(timeout)


def api_host() -> str:
    """The API server from the environment or clearml.conf (read by ClearML's own config
    loader); raises if neither names one."""
    host = os.environ.get("CLEARML_API_HOST")
    if not host:
        try:
            from clearml.config import config_obj

            host = config_obj.get("api.api_server", None)
        except Exception as exc:  # a broken file must say so, not fall back to the demo server
            raise ServerNotConfigured(f"clearml.conf cannot be read ({exc})") from exc
    if not host:
        raise ServerNotConfigured(f"no ClearML server is configured; {HOW_TO_CONFIGURE}")
    return str(host).rstrip("/")


def check_server(timeout: float = 5.0) -> str:
    """Returns the API host once it answers a ping; fails within ``timeout`` seconds."""
    import requests

    host = api_host()
    try:
        requests.get(f"{host}/debug.ping", timeout=timeout).raise_for_status()
    except requests.RequestException as exc:
        raise ServerNotConfigured(
            f"the ClearML server at {host} does not answer ({exc.__class__.__name__}); "
            f"start it (`make server-up` on the server machine) or {HOW_TO_CONFIGURE}"
        ) from exc
    return host


def require_queues(names: list[str]) -> None:
    """Each queue must exist before a pipeline is created: a missing one would leave a
    controller task behind (or a pipeline waiting forever)."""
    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    missing = [
        q for q in dict.fromkeys(names) if not client.queues.get_all(name=f"^{re.escape(q)}$")
    ]
    if missing:
        raise ServerNotConfigured(
            f"no queue named {', '.join(map(repr, missing))} on the ClearML server; start an "
            f"agent for it (`make agent QUEUE={missing[0]}` creates the queue), or name "
            "another with clearml.queues.*"
        )

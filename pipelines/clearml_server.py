"""Is a ClearML server configured and reachable? Answered before anything is created.

Without this check the SDK falls back to ClearML's public demo server; we never want that.
"""

from __future__ import annotations

import os
from pathlib import Path

HOW_TO_CONFIGURE = (
    "configure a ClearML server first, one of:\n"
    "  - run `clearml-init` and paste the credentials from the web UI (Settings > Workspace)\n"
    "  - export CLEARML_API_HOST, CLEARML_WEB_HOST, CLEARML_FILES_HOST, "
    "CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY\n"
    "  - write ~/clearml.conf (or point CLEARML_CONFIG_FILE at one); "
    "see docker/clearml.conf.example"
)


class ServerNotConfigured(RuntimeError):
    pass


def prepare_sdk() -> None:
    """Detect the git repository synchronously, before any task exists.

    ClearML's default detects it on a thread that runs git while the S3 client (checking
    output_uri) starts its own threads; that fork then hung for minutes here, intermittently.
    """
    from clearml.config import ConfigSDKWrapper, ConfigWrapper

    ConfigWrapper.set_overrides({"sdk": {"development": {"vcs_repo_detect_async": False}}})
    ConfigSDKWrapper.clear_config_impl()  # re-read the sdk section with the override


def config_file() -> Path:
    return Path(os.environ.get("CLEARML_CONFIG_FILE") or Path.home() / "clearml.conf")


def api_host() -> str:
    """The API server from the environment or clearml.conf; raises if neither names one."""
    host = os.environ.get("CLEARML_API_HOST")
    if not host and config_file().is_file():
        from pyhocon import ConfigFactory

        try:
            host = ConfigFactory.parse_file(str(config_file())).get("api.api_server", None)
        except Exception as exc:  # a broken file must say so, not fall back to the demo server
            raise ServerNotConfigured(f"{config_file()}: cannot be read ({exc})") from exc
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

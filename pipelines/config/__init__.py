"""Every setting of a run: its schema (schema.py, built from the parts' own settings classes)
and its composition and checks (compose.py). The YAML files in conf/ hold the choices."""

from components.settings import ConfigError
from pipelines.config.compose import (
    CONF_DIR,
    PROJECT_ROOT,
    RESOLVERS,
    compose,
    deploy_settings,
    group_choices,
    lookup,
    require_storage,
    section,
    to_container,
    validate,
)
from pipelines.config.schema import DEFAULT_EXPERIMENT_NAME, GROUPS, RunConfig

__all__ = [
    "CONF_DIR",
    "DEFAULT_EXPERIMENT_NAME",
    "GROUPS",
    "PROJECT_ROOT",
    "RESOLVERS",
    "ConfigError",
    "RunConfig",
    "compose",
    "deploy_settings",
    "group_choices",
    "lookup",
    "require_storage",
    "section",
    "to_container",
    "validate",
]

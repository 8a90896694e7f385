"""Generation backends behind one interface; the pipeline never branches on which it holds."""

from components.backends.base import (
    Backend,
    BackendChoice,
    Generation,
    GenerationParams,
    auto_backend,
    create_backend,
    resolve_backend,
)

__all__ = [
    "Backend",
    "BackendChoice",
    "Generation",
    "GenerationParams",
    "auto_backend",
    "create_backend",
    "resolve_backend",
]

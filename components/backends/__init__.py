"""Generation backends behind one interface; the pipeline never branches on which it holds."""

from components.backends.base import (
    Backend,
    Generation,
    GenerationParams,
    create_backend,
    resolve_backend_name,
)

__all__ = ["Backend", "Generation", "GenerationParams", "create_backend", "resolve_backend_name"]

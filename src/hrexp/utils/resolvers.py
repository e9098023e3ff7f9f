"""OmegaConf resolvers used by the Hydra configs in ``conf/``."""

from __future__ import annotations

from omegaconf import OmegaConf


def slug(name: str) -> str:
    """Turn a metric name into a file-name-safe tag: ``val/mre`` -> ``val_mre``."""
    return str(name).replace("/", "_")


def register_resolvers() -> None:
    """Register hrexp's resolvers once (safe to call repeatedly)."""
    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", slug)

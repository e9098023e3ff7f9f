"""hrexp: an experiment framework for high-resolution dense prediction."""

from hrexp.startup import set_environment_defaults

__version__ = "0.1.0"

set_environment_defaults()  # before any hrexp module can import timm (offline hub)

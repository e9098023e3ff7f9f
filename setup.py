"""The one thing pyproject.toml cannot say: the configs live at the top (``conf/``) and ship as ``hrexp.conf``.

``packages.find`` cannot add a package from outside ``src/``, so the package list is found here, and
``conf/`` is mapped into the package (also in an editable install, where it stays ``conf/``).
"""

from setuptools import find_namespace_packages, setup

setup(
    # namespace packages too: Hydra finds hrexp's Optuna sweeper in the namespace package hydra_plugins
    packages=find_namespace_packages("src", include=["hrexp*", "hydra_plugins*"]) + ["hrexp.conf"],
    package_dir={"": "src", "hrexp.conf": "conf"},
)

"""The one thing pyproject.toml cannot say: the configs live at the top (``conf/``) and ship as ``hrexp.conf``.

``packages.find`` cannot add a package from outside ``src/``, so the package list is found here, and
``conf/`` is mapped into the package (also in an editable install, where it stays ``conf/``).
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages("src") + ["hrexp.conf"],
    package_dir={"": "src", "hrexp.conf": "conf"},
)

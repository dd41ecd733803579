"""Package layout that pyproject.toml cannot express on its own.

``triton_kernels/`` sits at the top level of the repository (next to ``segblocks/``) but is
installed under the namespaced import name ``segblocks_kernels``: the bare name
``triton_kernels`` belongs to the triton project's own package (installed by vLLM and others).

``recipes/`` also stays at the top level (``lightning fit -c recipes/pro_scale.yaml`` from a
clone) and is installed as the data package ``segblocks/recipes/*.yaml``, so the same command works
after ``pip install segblocks`` from any directory (see :mod:`segblocks.lightning.cli`).
"""
from setuptools import find_packages, setup

kernel_packages = ["segblocks_kernels"] + [
    f"segblocks_kernels.{sub}" for sub in find_packages("triton_kernels")
]
setup(
    packages=find_packages(include=["segblocks", "segblocks.*"]) + kernel_packages + ["segblocks.recipes"],
    package_dir={"segblocks_kernels": "triton_kernels", "segblocks.recipes": "recipes"},
    package_data={"segblocks.recipes": ["*.yaml"]},
    include_package_data=False,
)

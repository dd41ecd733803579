"""Package layout that pyproject.toml cannot express on its own.

``triton_kernels/`` sits at the top level of the repository (next to ``segblocks/``) but is
installed under the namespaced import name ``segblocks_kernels``: the bare name
``triton_kernels`` belongs to the triton project's own package (installed by vLLM and others).
"""
from setuptools import find_packages, setup

kernel_packages = ["segblocks_kernels"] + [
    f"segblocks_kernels.{sub}" for sub in find_packages("triton_kernels")
]
setup(
    packages=find_packages(include=["segblocks", "segblocks.*"]) + kernel_packages,
    package_dir={"segblocks_kernels": "triton_kernels"},
)

"""Build for electra_fast.

Layout (see README): the Python package lives in ``electra_fast/``, the Triton kernels in
``kernels/`` (installed as the subpackage ``electra_fast.kernels``: the top-level name
``kernels`` belongs to another project on PyPI), and the C++ sources in ``csrc/``, compiled
with pybind11 into ``electra_fast._C``. The extension uses numpy arrays only, never torch
headers, so it builds without torch and works in data-loader worker processes.
"""

import glob
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

extra_compile_args = ["-O3"]
extra_link_args = []
if sys.platform != "win32":
    extra_compile_args += ["-pthread", "-fvisibility=hidden"]
    extra_link_args += ["-pthread"]

ext_modules = [
    Pybind11Extension(
        "electra_fast._C",
        sorted(glob.glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
]

setup(
    name="electra_fast",
    version="0.1.0",
    description="Fast single-GPU ELECTRA pre-training with fused Triton ops and C++ dynamic masking",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["electra_fast", "electra_fast.kernels"],
    package_dir={"electra_fast": "electra_fast", "electra_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    install_requires=[
        "torch>=2.4",
        "triton>=3.6; platform_system == 'Linux'",
        "numpy>=1.24",
        "tokenizers>=0.15",
        "tqdm>=4.60",
        "safetensors>=0.4",
    ],
    extras_require={
        # corpora in zstd (.zst) and Parquet / Arrow (HuggingFace datasets); plain, gzip, bzip2, xz
        # and JSON lines need nothing beyond the standard library
        "corpora": ["zstandard>=0.20", "pyarrow>=12"],
        "tb": ["tensorboard>=2.10"],  # train --tensorboard (on by default when installed)
        "plot": ["matplotlib>=3.5"],  # python -m electra_fast.plot
        "test": [
            "zstandard>=0.20",
            "pyarrow>=12",
            "pytest>=7",
            "pytest-benchmark>=4",
            "transformers>=4.40",
            "hypothesis>=6",
            "scipy>=1.10",
            "ruff",
            "tensorboard>=2.10",
            "matplotlib>=3.5",
        ],
    },
    entry_points={
        "console_scripts": [
            "electra-fast-train=electra_fast.train:main",
            "electra-fast-prepare=electra_fast.prepare:main",
        ]
    },
    zip_safe=False,
)

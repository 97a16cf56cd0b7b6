"""Shared settings for ``pytest benchmarks/``.

Adds the library versions and the GPU (if any) to pytest-benchmark's ``machine_info``, so a
``--benchmark-json`` file and ``--benchmark-compare`` runs say what produced the numbers.
"""

from __future__ import annotations


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    for name in ("triton", "transformers", "tokenizers", "numpy"):
        try:
            machine_info[name] = __import__(name).__version__
        except ImportError:
            machine_info[name] = None

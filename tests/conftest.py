"""Test-session setup shared by every test module.

The Triton kernels are tested on the CPU through Triton's interpreter, which must be switched on
before triton is first imported (any test module importing the model imports triton). On a
machine with a CUDA GPU the interpreter stays off, so the same tests run the compiled kernels.
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

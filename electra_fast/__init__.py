"""electra_fast: fast single-GPU ELECTRA pre-training.

    from electra_fast import ElectraConfig, Electra
    model = Electra(ElectraConfig.preset("small"))
"""

from .config import PRESETS, ElectraConfig

__version__ = "0.1.0"

__all__ = ["ElectraConfig", "PRESETS", "Electra", "ElectraOutput", "__version__"]


def __getattr__(name):  # lazy: importing the package must not pay for torch until needed
    if name in ("Electra", "ElectraOutput"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'electra_fast' has no attribute {name!r}")

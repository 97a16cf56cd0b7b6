"""The data pipeline's public names in one place (earlier code imports them from here).

Preparation (corpus -> vocabulary -> packed shards) lives in ``prepare.py``; loading (shards ->
shuffled, masked batches) in ``loader.py``. Read those top to bottom.
"""

from .loader import (  # noqa: F401
    BLOCK_ROWS,
    BUFFER_BLOCKS,
    FORMAT_VERSION,
    SPLITS,
    PretrainingDataset,
    PretrainingLoader,
    Split,
    id_dtype,
    load_dataset,
)
from .prepare import (  # noqa: F401
    CHUNK_CHARS,
    SHORT_SEQ_PROB,
    SINGLE_SEGMENT_PROB,
    build_examples,
    prepare_corpus,
    prepare_dataset,
)

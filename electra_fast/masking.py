"""Dynamic masking of a token batch: which positions the generator must predict.

    from electra_fast.masking import mask_batch
    out = mask_batch(ids, vocab_size=30522, mask_token_id=103, special_ids=[0, 100, 101, 102, 103], seed=step)
    out.input_ids, out.masked_positions, out.masked_ids, out.masked_weights

Rules (google-research/electra ``pretrain_helpers.mask``; docs/ARCHITECTURE.md section 1, "Mask"):

- per sequence, ``n = max(1, min(N, round(L * mask_prob)))`` positions are chosen uniformly among
  the candidate positions, where L is the number of real (non-pad) tokens, ``round`` is round half
  to even in float64 (as ``tf.round``), and ``N = max_predictions`` defaults to
  ``int((mask_prob + 0.005) * T)`` (19 at T = 128). Candidates are all positions whose id is not
  special (``special_ids`` plus ``pad_token_id``). With fewer candidates than n, all are chosen.
- each chosen position independently becomes ``[MASK]`` with probability ``mask_replace_prob``,
  a random id with probability ``random_replace_prob`` (uniform over ``[0, vocab_size)`` minus the
  special ids), and keeps its id otherwise. ELECTRA: (0.85, 0.0), i.e. 85% [MASK] and 15% kept;
  BERT's 80/10/10 is (0.8, 0.1).
- whole-word masking, when ``word_starts`` is given (True at the first piece of each word): a word
  is a maximal run of candidate positions that begins where ``word_starts`` is True or the previous
  position is not a candidate. Words are visited in random order; a word is taken whole if the
  total stays <= N, and the visit stops once the total reaches n. The official code has no
  whole-word option; this follows BERT's ``create_pretraining_data.py`` except that the cap is N,
  not n, so the count lands on or just above n instead of below it (below n only when every word
  left would overflow N).

Two backends with one contract: ``"cpp"`` (``electra_fast._C``, multi-threaded over rows, each row
seeded by (seed, row), so the output never depends on the thread count) and ``"numpy"`` (a
vectorised reference, also the fallback when the extension is missing). They follow the same rules
but draw different random numbers, so they agree in distribution, not bit for bit.
"""

from __future__ import annotations

import functools
import operator
import os
import warnings
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

__all__ = ["MaskedBatch", "mask_batch"]

_ID_MAX = {np.dtype(t): int(np.iinfo(t).max) for t in (np.int32, np.uint16, np.int64)}
_BACKENDS = ("cpp", "numpy")


class MaskedBatch(NamedTuple):
    """A masked batch; N = max_predictions. Static shapes: the padding slots keep training sync-free."""

    input_ids: np.ndarray  # (B, T) input dtype, masking applied
    masked_positions: np.ndarray  # (B, N) int64, ascending per row, 0 after the real ones
    masked_ids: np.ndarray  # (B, N) int64, original ids at those positions, 0 in padding slots
    masked_weights: np.ndarray  # (B, N) float32, 1.0 for real slots, 0.0 for padding slots


def mask_batch(
    input_ids: np.ndarray,
    *,
    vocab_size: int,
    mask_token_id: int,
    special_ids: Iterable[int],
    mask_prob: float = 0.15,
    max_predictions: int | None = None,
    mask_replace_prob: float = 0.85,
    random_replace_prob: float = 0.0,
    word_starts: np.ndarray | None = None,
    seed: int,
    threads: int | None = None,
    backend: str = "cpp",
    pad_token_id: int = 0,
) -> MaskedBatch:
    """Choose and corrupt the positions to predict in a [B, T] batch (rules in the module docstring).

    Args:
        input_ids: (B, T) int32, uint16 or int64 token ids; ``pad_token_id`` marks padding. Not modified.
        vocab_size: ids must lie in [0, vocab_size); random replacements are drawn below it.
        mask_token_id: the [MASK] id; must be among ``special_ids``.
        special_ids: ids never chosen ([CLS], [SEP], [MASK], [PAD], ...); the pad id is always excluded.
        mask_prob: fraction of real tokens to predict (0.15; 0.25 for ELECTRA-Large).
        max_predictions: N, the width of the outputs and the per-row cap; default ``int((p + 0.005) * T)``.
        mask_replace_prob: probability that a chosen position becomes [MASK].
        random_replace_prob: probability that it becomes a random non-special id; it keeps its id
            with probability ``1 - mask_replace_prob - random_replace_prob``.
        word_starts: optional (B, T) bool, True at the first piece of each word: whole-word masking.
        seed: the output is a function of the seed and the inputs only (any thread count).
        threads: C++ worker threads; None uses all cores. Small batches use fewer (thread start-up
            costs more than it saves below ~64k tokens per thread).
        backend: ``"cpp"`` or ``"numpy"``.
        pad_token_id: the padding id (0).

    Returns:
        ``MaskedBatch(input_ids, masked_positions, masked_ids, masked_weights)``; see its fields.

    Raises:
        ValueError: naming the argument that is wrong.
    """
    job = _validate(**locals())  # locals() holds exactly the arguments at this point
    if backend == "cpp":
        native = _native()
        if native is not None:
            return MaskedBatch(*native.mask_batch(*job))
    _check_id_range(job.input_ids, job.vocab_size)
    return _mask_batch_numpy(job)


# ----------------------------------------------------------------------------- validation


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_prob(x) -> bool:
    return (
        isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and 0.0 <= x <= 1.0
    )


class _Job(NamedTuple):
    """Validated arguments, in the order of the C++ entry point ``_C.mask_batch``."""

    input_ids: np.ndarray  # (B, T) C-contiguous
    word_starts: np.ndarray | None  # (B, T) C-contiguous bool
    special_ids: np.ndarray  # (S,) int64, sorted, includes the pad id
    vocab_size: int
    mask_token_id: int
    pad_token_id: int
    mask_prob: float
    max_predictions: int
    mask_replace_prob: float
    random_replace_prob: float
    seed: int  # reduced to [0, 2^64)
    threads: int


def _validate(
    *,
    input_ids,
    vocab_size,
    mask_token_id,
    special_ids,
    mask_prob,
    max_predictions,
    mask_replace_prob,
    random_replace_prob,
    word_starts,
    seed,
    threads,
    backend,
    pad_token_id,
) -> _Job:
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; use one of {_BACKENDS}")
    ids = np.asarray(input_ids)
    if ids.dtype not in _ID_MAX:
        raise ValueError(f"input_ids has dtype {ids.dtype}; expected int32, uint16 or int64")
    if ids.ndim != 2:
        raise ValueError(f"input_ids has shape {ids.shape}; expected a 2-D [B, T] array")
    ids = np.ascontiguousarray(ids)
    B, T = ids.shape

    ws = None
    if word_starts is not None:
        ws = np.asarray(word_starts)
        if ws.dtype != np.bool_:
            raise ValueError(
                f"word_starts has dtype {ws.dtype}; expected bool (True at a word's first piece)"
            )
        if ws.ndim != 2:
            raise ValueError(f"word_starts has shape {ws.shape}; expected a 2-D [B, T] array")
        if ws.shape != ids.shape:
            raise ValueError(f"word_starts has shape {ws.shape} but input_ids has shape {ids.shape}")
        ws = np.ascontiguousarray(ws)

    if not _is_int(vocab_size) or vocab_size <= 0:
        raise ValueError(f"vocab_size={vocab_size!r} must be a positive integer")
    if vocab_size >= 2**32:
        raise ValueError(f"vocab_size={vocab_size} is too large (at most 2^32 - 1)")
    for name, p in (
        ("mask_prob", mask_prob),
        ("mask_replace_prob", mask_replace_prob),
        ("random_replace_prob", random_replace_prob),
    ):
        if not _is_prob(p):
            raise ValueError(f"{name}={p!r} must be a probability in [0, 1]")
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-12:
        raise ValueError(
            f"mask_replace_prob + random_replace_prob = {mask_replace_prob} + {random_replace_prob} exceeds 1; "
            "the rest (1 - both) is the probability of keeping the original id"
        )

    if not _is_int(pad_token_id) or not 0 <= pad_token_id < vocab_size:
        raise ValueError(f"pad_token_id={pad_token_id!r} must be an integer in [0, vocab_size={vocab_size})")
    given, specials = _resolve_specials(special_ids, pad_token_id, vocab_size)
    if not _is_int(mask_token_id) or int(mask_token_id) not in given:
        raise ValueError(
            f"mask_token_id={mask_token_id!r} must be among special_ids {list(given)} "
            "(a [MASK] already in the input must never be chosen)"
        )
    limit = _ID_MAX[ids.dtype]
    if mask_token_id > limit:
        raise ValueError(f"mask_token_id={mask_token_id} does not fit input_ids dtype {ids.dtype}")
    if random_replace_prob > 0:
        if vocab_size - 1 > limit:
            raise ValueError(
                f"vocab_size={vocab_size}: random replacement ids would not fit input_ids dtype {ids.dtype}"
            )
        if specials.size >= vocab_size:
            raise ValueError("random_replace_prob > 0 needs at least one non-special id below vocab_size")

    if max_predictions is None:
        n_max = max(1, int((mask_prob + 0.005) * T))  # pretrain_helpers / configure_pretraining.py
    elif not _is_int(max_predictions) or not 1 <= max_predictions < 2**31:
        raise ValueError(f"max_predictions={max_predictions!r} must be an integer in [1, 2^31)")
    else:
        n_max = int(max_predictions)

    if not _is_int(seed):
        raise ValueError(f"seed={seed!r} must be an integer")
    if threads is None:
        nthreads = _cpu_count()
    elif not _is_int(threads) or threads < 1:
        raise ValueError(f"threads={threads!r} must be an integer >= 1 (or None for all cores)")
    else:
        nthreads = min(int(threads), 1 << 16)  # the C++ side never uses more than one per row anyway
    return _Job(
        ids,
        ws,
        specials,
        int(vocab_size),
        int(mask_token_id),
        int(pad_token_id),
        float(mask_prob),
        n_max,
        float(mask_replace_prob),
        float(random_replace_prob),
        int(seed) & 0xFFFF_FFFF_FFFF_FFFF,
        nthreads,
    )


def _resolve_specials(special_ids, pad_token_id: int, vocab_size: int) -> tuple[frozenset, np.ndarray]:
    """(the given special ids, sorted int64 array of them plus the pad id), cached per argument set."""
    try:
        key = tuple(map(operator.index, special_ids))  # integers only: 1.5 is refused, not truncated
    except (TypeError, ValueError) as e:
        raise ValueError(f"special_ids must be an iterable of integer ids ({e})") from None
    return _resolve_specials_cached(key, int(pad_token_id), int(vocab_size))


@functools.lru_cache(maxsize=64)
def _resolve_specials_cached(key: tuple, pad_token_id: int, vocab_size: int) -> tuple[frozenset, np.ndarray]:
    given = sorted(set(key))
    if given and not (0 <= given[0] and given[-1] < vocab_size):
        raise ValueError(f"special_ids {given} must lie in [0, vocab_size={vocab_size})")
    specials = np.array(sorted(set(given) | {pad_token_id}), dtype=np.int64)
    specials.flags.writeable = False  # shared between calls through the cache
    return frozenset(given), specials


def _check_id_range(ids: np.ndarray, vocab_size: int) -> None:
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        b, t = np.argwhere(ids == bad)[0]
        raise ValueError(f"input_ids[{b}, {t}] = {bad} is outside [0, vocab_size={vocab_size})")


@functools.cache
def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the cores this process may use
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- backends

_warned_fallback = False


def _native():
    """The C++ module if it has masking, else None (after one warning per process)."""
    global _warned_fallback
    try:
        from . import _C

        if hasattr(_C, "mask_batch"):
            return _C
        reason = "electra_fast._C has no mask_batch (stale build?)"
    except ImportError as e:
        reason = f"electra_fast._C did not import ({e})"
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"{reason}; masking falls back to the slower numpy backend. Rebuild with `pip install -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def _mask_batch_numpy(job: _Job) -> MaskedBatch:
    """Vectorised reference: random keys put the candidates (tokens or words) of every row in random order."""
    ids, n_max = job.input_ids, job.max_predictions
    rng = np.random.default_rng(job.seed)
    B, T = ids.shape
    cand = ~np.isin(ids, job.special_ids)  # (B, T); the pad id is among the specials
    L = (ids != job.pad_token_id).sum(axis=1)
    n = np.clip(np.rint(L * job.mask_prob).astype(np.int64), 1, n_max)  # (B,) pretrain_helpers.mask
    if job.word_starts is None:
        chosen = _choose_tokens(rng, cand, n)
    else:
        chosen = _choose_words(rng, cand, job.word_starts, n, n_max)

    # Chosen positions, row by row in ascending order, into the first slots of each row.
    counts = chosen.sum(axis=1)
    rows, cols = np.nonzero(chosen)  # row-major, so ascending within a row
    slots = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    positions = np.zeros((B, n_max), dtype=np.int64)
    masked_ids = np.zeros((B, n_max), dtype=np.int64)
    weights = np.zeros((B, n_max), dtype=np.float32)
    positions[rows, slots] = cols
    masked_ids[rows, slots] = ids[rows, cols]
    weights[rows, slots] = 1.0

    # One uniform draw per chosen position: [MASK] below p_mask, random id below p_mask + p_random.
    u = rng.random(rows.size)
    to_mask = u < job.mask_replace_prob
    to_random = ~to_mask & (u < job.mask_replace_prob + job.random_replace_prob)
    out = ids.copy()
    out[rows[to_mask], cols[to_mask]] = job.mask_token_id
    if to_random.any():
        out[rows[to_random], cols[to_random]] = _random_non_special(rng, int(to_random.sum()), job)
    return MaskedBatch(out, positions, masked_ids, weights)


def _random_non_special(rng: np.random.Generator, size: int, job: _Job) -> np.ndarray:
    """Uniform draws from [0, vocab_size) minus the special ids: draw an index r among the
    non-special ids, then step over each special id (ascending) at or below it."""
    x = rng.integers(0, job.vocab_size - job.special_ids.size, size)
    for s in job.special_ids:
        x += x >= s
    return x


def _choose_tokens(rng: np.random.Generator, cand: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(B, T) bool: the n[b] candidates of row b with the smallest random keys (all if fewer)."""
    B, T = cand.shape
    keys = np.where(cand, rng.random((B, T)), 2.0)  # non-candidates sort last
    k = min(int(n.max(initial=0)), T)
    first = np.argsort(keys, axis=1)[:, :k]  # (B, k) positions in random order
    take = (np.arange(k) < n[:, None]) & np.take_along_axis(cand, first, axis=1)
    chosen = np.zeros((B, T), dtype=bool)
    np.put_along_axis(chosen, first, take, axis=1)
    return chosen


def _choose_words(
    rng: np.random.Generator, cand: np.ndarray, word_starts: np.ndarray, n: np.ndarray, n_max: int
) -> np.ndarray:
    """(B, T) bool: whole words visited in random order, each taken if the total stays <= n_max,
    until the total reaches n[b]. Vectorised over rows; the loop runs over visiting order."""
    B, T = cand.shape
    prev = np.zeros_like(cand)
    prev[:, 1:] = cand[:, :-1]
    start = cand & (word_starts | ~prev)  # a run of candidates always opens a word
    word = np.cumsum(start, axis=1) - 1  # (B, T) word index of each candidate position
    W = start.sum(axis=1)
    n_words = int(W.max(initial=0))
    if n_words == 0:
        return np.zeros((B, T), dtype=bool)
    rows, cols = np.nonzero(cand)
    length = np.bincount(rows * n_words + word[rows, cols], minlength=B * n_words).reshape(B, n_words)
    keys = np.where(np.arange(n_words) < W[:, None], rng.random((B, n_words)), 2.0)
    order = np.argsort(keys, axis=1)  # (B, n_words) words in visiting order
    length_in_order = np.take_along_axis(length, order, axis=1)
    take = np.zeros((B, n_words), dtype=bool)
    total = np.zeros(B, dtype=np.int64)
    for k in range(n_words):
        active = total < n
        if not active.any():
            break
        fits = active & (length_in_order[:, k] > 0) & (total + length_in_order[:, k] <= n_max)
        take[:, k] = fits
        total += np.where(fits, length_in_order[:, k], 0)
    chosen_word = np.zeros((B, n_words), dtype=bool)
    np.put_along_axis(chosen_word, order, take, axis=1)
    return cand & np.take_along_axis(chosen_word, np.maximum(word, 0), axis=1)

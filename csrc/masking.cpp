// Dynamic masking of a whole [B, T] batch (docs/ARCHITECTURE.md section 1, "Mask"; issue 4).
//
// Rules (google-research/electra pretrain_helpers.mask): per row choose
// n = max(1, min(N, round(L * p))) positions uniformly among the non-special, non-pad positions
// (L = real tokens, round half to even in float64); each chosen position independently becomes
// [MASK] with probability mask_replace_prob, a random non-special id with probability
// random_replace_prob, and keeps its id otherwise. With word_starts, whole words are chosen instead
// (see mask_row_words). The Python wrapper electra_fast/masking.py validates arguments and
// documents the contract; this file re-checks what it needs so a direct call can never crash.
//
// Every row draws from its own generator seeded by (seed, row), so the output depends on the seed
// only, never on the thread count or on how rows are split between threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(_MSC_VER)
#include <intrin.h>
#endif

namespace py = pybind11;

namespace {

// ---------------------------------------------------------------- random numbers

inline uint64_t mix64(uint64_t z) {  // splitmix64 finaliser (Steele, Lea, Flood 2014)
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// SplitMix64 (passes BigCrush), handed out 32 bits at a time: choosing ~20 positions and
// their fates needs no more, and one 64-bit draw then serves two decisions.
struct Rng {
  uint64_t s, spare = 0;
  bool has_spare = false;
  Rng(uint64_t seed, uint64_t row) : s(mix64(seed ^ mix64(row + 0x632be59bd9b4e019ULL))) {}
  inline uint32_t next32() {
    if (has_spare) {
      has_spare = false;
      return static_cast<uint32_t>(spare >> 32);
    }
    spare = mix64(s += 0x9e3779b97f4a7c15ULL);
    has_spare = true;
    return static_cast<uint32_t>(spare);
  }
  // Uniform integer in [0, n), n >= 1, without modulo bias (Lemire 2019, multiply and reject).
  inline uint32_t below(uint32_t n) {
    uint64_t m = static_cast<uint64_t>(next32()) * n;
    uint32_t lo = static_cast<uint32_t>(m);
    if (lo < n) {
      const uint32_t threshold = static_cast<uint32_t>(-n) % n;
      while (lo < threshold) {
        m = static_cast<uint64_t>(next32()) * n;
        lo = static_cast<uint32_t>(m);
      }
    }
    return static_cast<uint32_t>(m >> 32);
  }
};

// A probability as a threshold on next32(): P(next32() < t) = t / 2^32, within 2^-33 of p.
inline uint64_t threshold32(double p) { return static_cast<uint64_t>(std::llround(p * 4294967296.0)); }

inline int lowest_bit(uint64_t x) {  // x != 0
#if defined(_MSC_VER)
  unsigned long i;
  _BitScanForward64(&i, x);
  return static_cast<int>(i);
#else
  return __builtin_ctzll(x);
#endif
}

// ---------------------------------------------------------------- per-call settings

struct Params {
  int64_t B, T, N;
  int64_t vocab_size, mask_id, pad_id;
  double mask_prob;
  uint64_t t_mask, t_mask_or_random;  // threshold32 of p_mask and p_mask + p_random
  uint64_t seed;
  // special[min(id, n_table - 1)] says whether id is special; the last entry is a 0 sentinel
  // for every id above the largest special one, so the lookup needs no branch.
  const uint8_t* special;
  int64_t n_table;
};

inline bool is_special(const Params& P, int64_t id) {
  return P.special[std::min<uint64_t>(static_cast<uint64_t>(id), static_cast<uint64_t>(P.n_table - 1))];
}

// n = max(1, min(N, round(L * p))): pretrain_helpers.mask; rint rounds half to even like tf.round.
inline int64_t target_count(const Params& P, int64_t L) {
  const int64_t r = static_cast<int64_t>(std::nearbyint(static_cast<double>(L) * P.mask_prob));
  return std::max<int64_t>(1, std::min<int64_t>(P.N, r));
}

// Scratch space for one thread, allocated once per call before the threads start.
struct Scratch {
  std::vector<int32_t> a, b;   // candidates (token mode) or word starts / last pieces (word mode)
  std::vector<int32_t> len;    // word mode: length of the chosen word starting at t
  std::vector<uint64_t> bits;  // chosen positions (or chosen word starts) as a bitmap over T
  explicit Scratch(int64_t T) : a(T + 1), b(T + 1), len(T), bits((T + 63) / 64) {}
};

// Outcome of one row: 0 ok, else the column of the first id outside [0, vocab_size) plus one.
using RowStatus = int64_t;

template <typename Id>
inline RowStatus first_bad_id(const Params& P, const Id* in) {
  for (int64_t t = 0; t < P.T; ++t)
    if (static_cast<uint64_t>(static_cast<int64_t>(in[t])) >= static_cast<uint64_t>(P.vocab_size))
      return t + 1;
  return 0;
}

// Writes one row's outputs for the chosen positions, given as a bitmap (so they come out in
// ascending order without a sort), and pads the slots after them.
struct RowOut {
  int64_t* pos;
  int64_t* ids;
  float* w;
};

template <typename Id>
inline void emit(const Params& P, Rng& rng, const Id* in, Id* out, RowOut o, Scratch& s, bool words) {
  int64_t m = 0;
  const int64_t nwords = static_cast<int64_t>(s.bits.size());
  for (int64_t k = 0; k < nwords; ++k) {
    for (uint64_t x = s.bits[k]; x; x &= x - 1) {
      const int64_t t0 = k * 64 + lowest_bit(x);
      const int64_t t1 = t0 + (words ? s.len[t0] : 1);
      for (int64_t t = t0; t < t1; ++t, ++m) {
        o.pos[m] = t;
        o.ids[m] = static_cast<int64_t>(in[t]);
        o.w[m] = 1.0f;
        // [MASK] with p_mask, a random non-special id with p_random, else kept (one uniform draw).
        const uint64_t u = rng.next32();
        if (u < P.t_mask) {
          out[t] = static_cast<Id>(P.mask_id);
        } else if (u < P.t_mask_or_random) {
          int64_t r;
          do r = rng.below(static_cast<uint32_t>(P.vocab_size));  // rejection: specials are few
          while (is_special(P, r));
          out[t] = static_cast<Id>(r);
        }
      }
    }
    s.bits[k] = 0;  // leave the bitmap clear for the next row
  }
  for (; m < P.N; ++m) o.pos[m] = 0, o.ids[m] = 0, o.w[m] = 0.0f;
}

// Per-call constants in the id type, so that count_row compares ids without widening them and
// the compiler vectorises its loop (SSE2 is enough): 3x faster than a table lookup per id.
template <typename Id>
struct Typed {
  Id pad = 0, vmax = 0;    // the padding id; the largest valid id
  bool pad_fits = false;   // false: no id of this type can be padding
  bool use_table = false;  // many special ids: look ids up in P.special instead of comparing
  std::vector<Id> others;  // the special ids other than the pad that fit the type

  explicit Typed(const Params& P) {
    constexpr int64_t kTypeMax = static_cast<int64_t>(std::numeric_limits<Id>::max());
    vmax = static_cast<Id>(std::min(P.vocab_size - 1, kTypeMax));
    pad_fits = P.pad_id <= kTypeMax;
    pad = pad_fits ? static_cast<Id>(P.pad_id) : Id{0};
    for (int64_t id = 0; id < P.n_table - 1 && id <= kTypeMax; ++id)
      if (P.special[id] && id != P.pad_id) others.push_back(static_cast<Id>(id));
    use_table = others.size() > 8;
  }
};

// One pass over a row: padding count, other-special count, out-of-range flag. S, the number of
// special ids besides the pad, is a template argument so the compare chain unrolls and the loop
// vectorises; S = -1 looks ids up in the table instead (many special ids).
template <int S, typename Id>
inline void count_pass(const Params& P, const Typed<Id>& K, const Id* __restrict in, int32_t& n_pad,
                       int32_t& n_special, int32_t& bad) {
  Id sid[S > 0 ? S : 1] = {};
  for (int k = 0; k < S; ++k) sid[k] = K.others[k];
  const Id pad = K.pad, vmax = K.vmax;
  const int32_t pad_fits = K.pad_fits;
  for (int64_t t = 0; t < P.T; ++t) {
    const Id x = in[t];
    const int32_t is_pad = pad_fits & (x == pad);
    n_pad += is_pad;
    if constexpr (std::is_signed_v<Id>)
      bad |= (x < 0) | (x > vmax);
    else
      bad |= x > vmax;
    if constexpr (S >= 0) {
      int32_t hit = 0;
      for (int k = 0; k < S; ++k) hit |= x == sid[k];
      n_special += hit;
    } else {
      n_special += P.special[std::min<uint64_t>(x, P.n_table - 1)] & !is_pad;
    }
  }
}

// Real tokens L and candidates c of one row; false if an id is outside [0, vocab_size).
template <typename Id>
inline bool count_row(const Params& P, const Typed<Id>& K, const Id* in, int64_t& L, int64_t& c) {
  int32_t n_pad = 0, n_special = 0, bad = 0;
  switch (K.use_table ? -1 : static_cast<int>(K.others.size())) {
    case 0:
      count_pass<0>(P, K, in, n_pad, n_special, bad);
      break;
    case 1:
      count_pass<1>(P, K, in, n_pad, n_special, bad);
      break;
    case 2:
      count_pass<2>(P, K, in, n_pad, n_special, bad);
      break;
    case 3:
      count_pass<3>(P, K, in, n_pad, n_special, bad);
      break;
    case 4:
      count_pass<4>(P, K, in, n_pad, n_special, bad);
      break;
    case 5:
      count_pass<5>(P, K, in, n_pad, n_special, bad);
      break;
    case 6:
      count_pass<6>(P, K, in, n_pad, n_special, bad);
      break;
    case 7:
      count_pass<7>(P, K, in, n_pad, n_special, bad);
      break;
    case 8:
      count_pass<8>(P, K, in, n_pad, n_special, bad);
      break;
    default:
      count_pass<-1>(P, K, in, n_pad, n_special, bad);
      break;
  }
  L = P.T - n_pad;
  c = L - n_special;
  return bad == 0;
}

template <typename Id>
RowStatus mask_row_tokens(const Params& P, const Typed<Id>& K, int64_t row, const Id* in, Id* out, RowOut o,
                          Scratch& s) {
  const int64_t T = P.T;
  std::memcpy(out, in, sizeof(Id) * T);
  int64_t L, c;
  if (!count_row(P, K, in, L, c)) return first_bad_id(P, in);
  const int64_t n = c == 0 ? 0 : std::min(target_count(P, L), c);
  Rng rng(P.seed, static_cast<uint64_t>(row));
  uint64_t* bits = s.bits.data();
  if (2 * c >= T && 2 * n <= c) {
    // Dense candidates, few picks: draw positions and reject non-candidates and repeats, which
    // is uniform over the remaining candidates and costs < 4 draws per pick here.
    for (int64_t i = 0; i < n;) {
      const int64_t t = rng.below(static_cast<uint32_t>(T));
      const uint64_t bit = uint64_t{1} << (t & 63);
      if (is_special(P, static_cast<int64_t>(in[t])) || (bits[t >> 6] & bit)) continue;
      bits[t >> 6] |= bit;
      ++i;
    }
  } else {
    int32_t* cand = s.a.data();
    int64_t k = 0;
    for (int64_t t = 0; t < T; ++t) {  // branch-free append
      cand[k] = static_cast<int32_t>(t);
      k += !is_special(P, static_cast<int64_t>(in[t]));
    }
    for (int64_t i = 0; i < n; ++i) {  // partial Fisher-Yates: cand[0, n) is a uniform n-subset
      const int64_t j = i + rng.below(static_cast<uint32_t>(c - i));
      std::swap(cand[i], cand[j]);
      bits[cand[i] >> 6] |= uint64_t{1} << (cand[i] & 63);
    }
  }
  emit(P, rng, in, out, o, s, /*words=*/false);
  return 0;
}

// Whole-word masking. A word is a maximal run of candidate (non-special, non-pad) positions that
// starts where word_starts is true or where the previous position is not a candidate (so a
// continuation piece right after [CLS] still belongs to some word). Words are visited in random
// order; a word is taken only if the total stays <= N, and the visit stops once the total
// reaches n (the same n as token masking, from the real-token count).
template <typename Id>
RowStatus mask_row_words(const Params& P, const Typed<Id>& K, int64_t row, const Id* in, const bool* starts,
                         Id* out, RowOut o, Scratch& s) {
  const int64_t T = P.T;
  std::memcpy(out, in, sizeof(Id) * T);
  int64_t L, c;
  if (!count_row(P, K, in, L, c)) return first_bad_id(P, in);
  // Word boundaries without branches (starts are data, a branch on them mispredicts): the start
  // of word W is written to slot W until a word opens there; each candidate writes its position
  // as the last piece of the current word, a non-candidate writes to a dummy slot T.
  int32_t* wstart = s.a.data();
  int32_t* wlast = s.b.data();
  int64_t W = 0;
  bool prev = false;
  for (int64_t t = 0; t < T; ++t) {
    const bool cand = !is_special(P, static_cast<int64_t>(in[t]));
    const bool opens = cand & (starts[t] | !prev);
    wstart[W] = static_cast<int32_t>(t);
    W += opens;
    wlast[cand ? W - 1 : T] = static_cast<int32_t>(t);
    prev = cand;
  }
  const int64_t n = W == 0 ? 0 : target_count(P, L);
  Rng rng(P.seed, static_cast<uint64_t>(row));
  int64_t total = 0;
  for (int64_t i = 0; i < W && total < n; ++i) {
    const int64_t j = i + rng.below(static_cast<uint32_t>(W - i));
    std::swap(wstart[i], wstart[j]);
    std::swap(wlast[i], wlast[j]);
    const int32_t len = wlast[i] - wstart[i] + 1;
    if (total + len <= P.N) {
      total += len;
      s.len[wstart[i]] = len;
      s.bits[wstart[i] >> 6] |= uint64_t{1} << (wstart[i] & 63);
    }
  }
  emit(P, rng, in, out, o, s, /*words=*/true);
  return 0;
}

// Work per thread below which starting a thread costs more than it saves: a std::thread takes
// tens of microseconds to start and join, 64k tokens take ~100 us on one core. So an
// ELECTRA-Small batch (128 x 128) runs on the calling thread whatever `threads` says.
constexpr int64_t kMinTokensPerThread = 1 << 16;

template <typename Id>
py::tuple mask_batch_typed(const Params& P, const py::array& input_ids, const py::object& word_starts,
                           int64_t threads) {
  const int64_t B = P.B, T = P.T, N = P.N;
  py::array_t<Id> out_ids({B, T});
  py::array_t<int64_t> positions({B, N});
  py::array_t<int64_t> masked_ids({B, N});
  py::array_t<float> weights({B, N});
  const Id* in = static_cast<const Id*>(input_ids.data());
  const bool* starts =
      word_starts.is_none() ? nullptr : static_cast<const bool*>(py::array(word_starts).data());
  Id* out = out_ids.mutable_data();
  int64_t* pos = positions.mutable_data();
  int64_t* ids = masked_ids.mutable_data();
  float* w = weights.mutable_data();

  const Typed<Id> K(P);
  const int64_t by_work = std::max<int64_t>(1, (B * T) / kMinTokensPerThread);
  const int64_t nthreads = std::max<int64_t>(1, std::min({threads, by_work, B}));
  std::vector<Scratch> scratch;
  scratch.reserve(nthreads);
  for (int64_t i = 0; i < nthreads; ++i) scratch.emplace_back(T);
  std::vector<RowStatus> status(B > 0 ? B : 1, 0);

  auto run = [&](int64_t tid, int64_t r0, int64_t r1) {
    Scratch& s = scratch[tid];
    for (int64_t r = r0; r < r1; ++r) {
      const RowOut o{pos + r * N, ids + r * N, w + r * N};
      status[r] = starts ? mask_row_words<Id>(P, K, r, in + r * T, starts + r * T, out + r * T, o, s)
                         : mask_row_tokens<Id>(P, K, r, in + r * T, out + r * T, o, s);
    }
  };
  {
    py::gil_scoped_release release;
    std::vector<std::thread> pool;
    const int64_t chunk = (B + nthreads - 1) / std::max<int64_t>(1, nthreads);
    for (int64_t tid = 1; tid < nthreads; ++tid) {
      const int64_t r0 = std::min(B, tid * chunk), r1 = std::min(B, r0 + chunk);
      try {
        pool.emplace_back(run, tid, r0, r1);
      } catch (const std::exception&) {  // could not start a thread: do its rows here
        run(tid, r0, r1);
      }
    }
    run(0, 0, std::min(B, chunk));
    for (auto& th : pool) th.join();
  }
  for (int64_t r = 0; r < B; ++r) {
    if (status[r]) {
      const int64_t t = status[r] - 1;
      throw py::value_error("input_ids[" + std::to_string(r) + ", " + std::to_string(t) +
                            "] = " + std::to_string(static_cast<int64_t>(in[r * T + t])) +
                            " is outside [0, vocab_size=" + std::to_string(P.vocab_size) + ")");
    }
  }
  return py::make_tuple(out_ids, positions, masked_ids, weights);
}

py::tuple mask_batch(const py::array& input_ids, const py::object& word_starts,
                     const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& special_ids,
                     int64_t vocab_size, int64_t mask_token_id, int64_t pad_token_id, double mask_prob,
                     int64_t max_predictions, double mask_replace_prob, double random_replace_prob,
                     uint64_t seed, int64_t threads) {
  if (input_ids.ndim() != 2) throw py::value_error("input_ids must be a 2-D [B, T] array");
  if (!(input_ids.flags() & py::array::c_style)) throw py::value_error("input_ids must be C-contiguous");
  const int64_t B = input_ids.shape(0), T = input_ids.shape(1);
  if (T >= (int64_t{1} << 31)) throw py::value_error("input_ids rows longer than 2^31 - 1 are not supported");
  if (!word_starts.is_none()) {
    if (!py::isinstance<py::array_t<bool>>(word_starts))
      throw py::value_error("word_starts must be a bool array");
    py::array ws(word_starts);
    if (ws.ndim() != 2 || ws.shape(0) != B || ws.shape(1) != T)
      throw py::value_error("word_starts must have the shape of input_ids");
    if (!(ws.flags() & py::array::c_style)) throw py::value_error("word_starts must be C-contiguous");
  }
  if (vocab_size <= 0 || vocab_size > (int64_t{1} << 32) - 1)
    throw py::value_error("vocab_size must be in [1, 2^32)");
  if (max_predictions < 1) throw py::value_error("max_predictions must be >= 1");
  if (threads < 1) throw py::value_error("threads must be >= 1");
  if (!(mask_prob >= 0.0 && mask_prob <= 1.0)) throw py::value_error("mask_prob must be in [0, 1]");
  if (!(mask_replace_prob >= 0.0 && random_replace_prob >= 0.0 &&
        mask_replace_prob + random_replace_prob <= 1.0 + 1e-12))
    throw py::value_error("mask_replace_prob and random_replace_prob must be >= 0 with sum <= 1");
  if (mask_token_id < 0 || mask_token_id >= vocab_size)
    throw py::value_error("mask_token_id must be in [0, vocab_size)");
  if (pad_token_id < 0 || pad_token_id >= vocab_size)
    throw py::value_error("pad_token_id must be in [0, vocab_size)");
  if (special_ids.ndim() != 1) throw py::value_error("special_ids must be a 1-D list of ids");
  const int64_t* sp = special_ids.data();
  const int64_t n_sp = special_ids.shape(0);

  // Special-id table, sized by the largest special id (not by the vocabulary) so it stays small,
  // plus the 0 sentinel that stands for every larger id.
  int64_t largest = std::max(pad_token_id, mask_token_id);
  for (int64_t i = 0; i < n_sp; ++i) {
    if (sp[i] < 0 || sp[i] >= vocab_size) throw py::value_error("special_ids must be in [0, vocab_size)");
    largest = std::max(largest, sp[i]);
  }
  std::vector<uint8_t> special(static_cast<size_t>(largest) + 2, 0);
  for (int64_t i = 0; i < n_sp; ++i) special[sp[i]] = 1;
  special[pad_token_id] = special[mask_token_id] = 1;
  int64_t n_special = 0;
  for (uint8_t f : special) n_special += f;
  if (random_replace_prob > 0.0 && n_special >= vocab_size)
    throw py::value_error("random_replace_prob > 0 needs at least one non-special id below vocab_size");

  Params P{};
  P.B = B, P.T = T, P.N = max_predictions;
  P.vocab_size = vocab_size, P.mask_id = mask_token_id, P.pad_id = pad_token_id;
  P.mask_prob = mask_prob;
  P.t_mask = threshold32(mask_replace_prob);
  P.t_mask_or_random = std::min(threshold32(mask_replace_prob + random_replace_prob), uint64_t{1} << 32);
  P.seed = seed;
  P.special = special.data(), P.n_table = static_cast<int64_t>(special.size());

  if (py::isinstance<py::array_t<int32_t>>(input_ids))
    return mask_batch_typed<int32_t>(P, input_ids, word_starts, threads);
  if (py::isinstance<py::array_t<uint16_t>>(input_ids))
    return mask_batch_typed<uint16_t>(P, input_ids, word_starts, threads);
  if (py::isinstance<py::array_t<int64_t>>(input_ids))
    return mask_batch_typed<int64_t>(P, input_ids, word_starts, threads);
  throw py::value_error("input_ids must be int32, uint16 or int64");
}

}  // namespace

void register_masking(py::module_& m) {
  m.def("mask_batch", &mask_batch, py::arg("input_ids"), py::arg("word_starts"), py::arg("special_ids"),
        py::arg("vocab_size"), py::arg("mask_token_id"), py::arg("pad_token_id"), py::arg("mask_prob"),
        py::arg("max_predictions"), py::arg("mask_replace_prob"), py::arg("random_replace_prob"),
        py::arg("seed"), py::arg("threads"),
        "Mask a [B, T] batch; returns (input_ids, masked_positions, masked_ids, masked_weights).\n"
        "Low-level: use electra_fast.masking.mask_batch, which validates and documents the arguments.");
}

// Philox-4x32 uniforms for the eager CPU reference of the generator head (kernels/generator_head.py,
// ``_reference_uniform``). The same draws as the torch port there, bit for bit, without its ~40 int64
// temporaries per logit: on the CPU that port was over half of a tiny-preset training step.
//
// Vocabulary index v of row r is word v % 4 of Philox(counter = (v / 4, r, 0, 0), key = seed's low and
// high 32 bits); the word, read as int32 with negatives folded by ~x, times `scale` in fp32, clamped
// into [lo, hi]. The Philox constants and the uniform's scale and bounds come from the caller (the
// Python module holds the one copy), so this file is only the arithmetic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

struct PhiloxConstants {
  uint32_t key_a, key_b, round_a, round_b;
  int rounds;
};

// Philox on kLanes counters at once, as separate word arrays: the compiler vectorises the lanes (the
// 32 x 32 -> 64-bit products included), where one counter at a time is a serial chain of 10 rounds.
constexpr int kLanes = 16;

inline void philox4x32_lanes(uint32_t c0[kLanes], uint32_t c1[kLanes], uint32_t c2[kLanes], uint32_t c3[kLanes],
                             uint32_t k0, uint32_t k1, const PhiloxConstants& p) {
  for (int i = 0; i < p.rounds; ++i) {
    for (int l = 0; l < kLanes; ++l) {
      const uint64_t prod_b = static_cast<uint64_t>(p.round_b) * c2[l];
      const uint64_t prod_a = static_cast<uint64_t>(p.round_a) * c0[l];
      const uint32_t n0 = static_cast<uint32_t>(prod_b >> 32) ^ c1[l] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(prod_a >> 32) ^ c3[l] ^ k1;
      c1[l] = static_cast<uint32_t>(prod_b);
      c3[l] = static_cast<uint32_t>(prod_a);
      c0[l] = n0;
      c2[l] = n2;
    }
    k0 += p.key_a;
    k1 += p.key_b;
  }
}

inline float uniform(uint32_t word, float scale, float lo, float hi) {
  const int32_t w = static_cast<int32_t>(word);
  const float u = static_cast<float>(w < 0 ? ~w : w) * scale;
  return std::min(std::max(u, lo), hi);
}

// Rows r0 + first .. r0 + last of the output (row-major [rows, V]).
void fill_rows(float* out, int64_t r0, int64_t first, int64_t last, int64_t V, uint32_t k0, uint32_t k1,
               const PhiloxConstants& p, float scale, float lo, float hi) {
  const int64_t groups = (V + 3) / 4;  // Philox counters per row: four vocabulary indices each
  uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  for (int64_t i = first; i < last; ++i) {
    float* row = out + i * V;
    const uint32_t r = static_cast<uint32_t>(r0 + i);  // the kernel's uint32 row counter
    for (int64_t g0 = 0; g0 < groups; g0 += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        c0[l] = static_cast<uint32_t>(g0 + l);
        c1[l] = r;
        c2[l] = 0u;
        c3[l] = 0u;
      }
      philox4x32_lanes(c0, c1, c2, c3, k0, k1, p);
      const int64_t n = std::min<int64_t>(kLanes, groups - g0);
      for (int64_t l = 0; l < n; ++l) {
        const int64_t v = 4 * (g0 + l);
        const uint32_t words[4] = {c0[l], c1[l], c2[l], c3[l]};
        for (int64_t j = 0; j < 4 && v + j < V; ++j) row[v + j] = uniform(words[j], scale, lo, hi);
      }
    }
  }
}

py::array_t<float> philox_uniforms(int64_t seed, int64_t r0, int64_t r1, int64_t V, py::tuple constants,
                                   float scale, float lo, float hi, int threads) {
  if (r1 < r0 || V < 1) throw py::value_error("philox_uniforms: need r1 >= r0 and V >= 1");
  if (constants.size() != 5) throw py::value_error("philox_uniforms: constants are (key_a, key_b, round_a, round_b, rounds)");
  const PhiloxConstants p{constants[0].cast<uint32_t>(), constants[1].cast<uint32_t>(), constants[2].cast<uint32_t>(),
                          constants[3].cast<uint32_t>(), constants[4].cast<int>()};
  const int64_t rows = r1 - r0;
  py::array_t<float> out({rows, V});
  float* o = out.mutable_data();
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint32_t k0 = static_cast<uint32_t>(s), k1 = static_cast<uint32_t>(s >> 32);
  // Threads split the rows; each row's words depend on (seed, row, index) only, so the split changes
  // nothing in the output. Below ~256k uniforms a thread costs more than it saves.
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>({threads, rows, rows * V / (1 << 18)}));
  {
    py::gil_scoped_release release;
    std::vector<std::thread> pool;
    const int64_t per = (rows + workers - 1) / workers;
    for (int64_t t = 1; t < workers; ++t) {
      const int64_t first = t * per, last = std::min(rows, first + per);
      if (first < last) pool.emplace_back(fill_rows, o, r0, first, last, V, k0, k1, std::cref(p), scale, lo, hi);
    }
    fill_rows(o, r0, 0, std::min(rows, per), V, k0, k1, p, scale, lo, hi);
    for (auto& th : pool) th.join();
  }
  return out;
}

}  // namespace

void register_philox(py::module_& m) {
  m.def("philox_uniforms", &philox_uniforms, py::arg("seed"), py::arg("r0"), py::arg("r1"), py::arg("V"),
        py::arg("constants"), py::arg("scale"), py::arg("lo"), py::arg("hi"), py::arg("threads") = 1,
        "Uniforms [r1 - r0, V] (float32) of the generator head's Philox noise for rows r0..r1 "
        "(kernels/generator_head.py, _reference_uniform), on up to `threads` threads.");
}

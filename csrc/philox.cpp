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

namespace py = pybind11;

namespace {

struct PhiloxConstants {
  uint32_t key_a, key_b, round_a, round_b;
  int rounds;
};

inline void philox4x32(uint32_t c[4], uint32_t k0, uint32_t k1, const PhiloxConstants& p) {
  for (int i = 0; i < p.rounds; ++i) {
    const uint64_t prod_b = static_cast<uint64_t>(p.round_b) * c[2];
    const uint64_t prod_a = static_cast<uint64_t>(p.round_a) * c[0];
    const uint32_t n0 = static_cast<uint32_t>(prod_b >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(prod_a >> 32) ^ c[3] ^ k1;
    c[1] = static_cast<uint32_t>(prod_b);
    c[3] = static_cast<uint32_t>(prod_a);
    c[0] = n0;
    c[2] = n2;
    k0 += p.key_a;
    k1 += p.key_b;
  }
}

py::array_t<float> philox_uniforms(int64_t seed, int64_t r0, int64_t r1, int64_t V, py::tuple constants,
                                   float scale, float lo, float hi) {
  if (r1 < r0 || V < 1) throw py::value_error("philox_uniforms: need r1 >= r0 and V >= 1");
  if (constants.size() != 5) throw py::value_error("philox_uniforms: constants are (key_a, key_b, round_a, round_b, rounds)");
  const PhiloxConstants p{constants[0].cast<uint32_t>(), constants[1].cast<uint32_t>(), constants[2].cast<uint32_t>(),
                          constants[3].cast<uint32_t>(), constants[4].cast<int>()};
  py::array_t<float> out({r1 - r0, V});
  float* o = out.mutable_data();
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint32_t k0 = static_cast<uint32_t>(s), k1 = static_cast<uint32_t>(s >> 32);
  {
    py::gil_scoped_release release;
    for (int64_t r = r0; r < r1; ++r) {
      float* row = o + (r - r0) * V;
      for (int64_t g = 0; 4 * g < V; ++g) {
        uint32_t c[4] = {static_cast<uint32_t>(g), static_cast<uint32_t>(r), 0u, 0u};
        philox4x32(c, k0, k1, p);
        for (int64_t j = 0; j < 4 && 4 * g + j < V; ++j) {
          const int32_t w = static_cast<int32_t>(c[j]);
          const float u = static_cast<float>(w < 0 ? ~w : w) * scale;
          row[4 * g + j] = std::min(std::max(u, lo), hi);
        }
      }
    }
  }
  return out;
}

}  // namespace

void register_philox(py::module_& m) {
  m.def("philox_uniforms", &philox_uniforms, py::arg("seed"), py::arg("r0"), py::arg("r1"), py::arg("V"),
        py::arg("constants"), py::arg("scale"), py::arg("lo"), py::arg("hi"),
        "Uniforms [r1 - r0, V] (float32) of the generator head's Philox noise for rows r0..r1 "
        "(kernels/generator_head.py, _reference_uniform).");
}

// electra_fast._C: the C++ side of electra_fast, over numpy arrays (no torch headers).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

namespace py = pybind11;

namespace {

// Real (non-padding) tokens per row of a [B, T] id array. Used by the loader to size
// per-sequence masking budgets; a small function that proves the build plumbing end to end.
template <typename T>
py::array_t<int64_t> count_real_tokens_impl(py::array_t<T, py::array::c_style> ids, int64_t pad_id) {
  if (ids.ndim() != 2) throw py::value_error("ids must be a 2-D [B, T] array");
  const int64_t B = ids.shape(0), L = ids.shape(1);
  py::array_t<int64_t> out(B);
  auto in = ids.template unchecked<2>();
  auto o = out.template mutable_unchecked<1>();
  {
    py::gil_scoped_release release;
    for (int64_t b = 0; b < B; ++b) {
      int64_t n = 0;
      for (int64_t t = 0; t < L; ++t) n += static_cast<int64_t>(in(b, t)) != pad_id;
      o(b) = n;
    }
  }
  return out;
}

}  // namespace

void register_masking(py::module_& m);  // masking.cpp
void register_philox(py::module_& m);   // philox.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "electra_fast C++ extension (numpy in, numpy out)";
  m.def("count_real_tokens", &count_real_tokens_impl<int32_t>, py::arg("ids"), py::arg("pad_id") = 0,
        "Number of entries != pad_id in each row of a [B, T] int32 array.");
  m.def("count_real_tokens", &count_real_tokens_impl<uint16_t>, py::arg("ids"), py::arg("pad_id") = 0);
  m.def("count_real_tokens", &count_real_tokens_impl<int64_t>, py::arg("ids"), py::arg("pad_id") = 0);
  register_masking(m);
  register_philox(m);
}

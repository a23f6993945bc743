// engine._native: the whole binding module. Each area registers itself from
// its own bind_*.cc file; no logic lives here.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace textfleet {
void register_tokenizer(py::module_& m);
}  // namespace textfleet

PYBIND11_MODULE(_native, m) {
  m.doc() = "textfleet native core: tokenizer, scheduler, collation";
  textfleet::register_tokenizer(m);
}

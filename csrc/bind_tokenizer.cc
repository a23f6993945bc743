// Python binding of the native tokenizer: converts inputs once, releases the
// GIL for the native work, and returns thin wrappers (ids become Python
// lists only when asked for; padding goes straight into numpy buffers).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "bind_tokenizer.h"
#include "collate.h"
#include "encoded_batch.h"
#include "thread_pool.h"
#include "tokenizer.h"

namespace py = pybind11;

namespace textfleet {
namespace {

using Batch = std::shared_ptr<const EncodedBatch>;

// UTF-8 views of a sequence of str. The tuple keeps every str alive (and
// unchanged) while the GIL is released; the views point into the str
// objects' own UTF-8 buffers, so ASCII text is not copied.
struct Utf8Inputs {
  py::tuple keep;
  std::vector<std::string_view> views;
};

std::string_view utf8_of(PyObject* o, const std::string& name) {
  if (!PyUnicode_Check(o)) {
    throw py::type_error(name + " must be str, got " + Py_TYPE(o)->tp_name);
  }
  Py_ssize_t len = 0;
  const char* s = PyUnicode_AsUTF8AndSize(o, &len);
  if (s == nullptr) {
    PyErr_Clear();
    throw py::value_error(name + " is not valid Unicode (it holds a lone surrogate)");
  }
  return {s, static_cast<size_t>(len)};
}

Utf8Inputs utf8_inputs(const py::handle& seq, const char* name) {
  if (PyUnicode_Check(seq.ptr())) {
    throw py::type_error(std::string(name) + " must be a sequence of str, not a single str");
  }
  PyObject* tuple = PySequence_Tuple(seq.ptr());
  if (tuple == nullptr) throw py::error_already_set();
  Utf8Inputs in{py::reinterpret_steal<py::tuple>(tuple), {}};
  const Py_ssize_t n = PyTuple_GET_SIZE(tuple);
  in.views.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    in.views.push_back(
        utf8_of(PyTuple_GET_ITEM(tuple, i), std::string(name) + "[" + std::to_string(i) + "]"));
  }
  return in;
}

// One row of a batch, seen from Python like a tokenizers.Encoding.
struct PyEncoding {
  Batch batch;
  size_t row;

  size_t begin() const { return batch->row_begin[row]; }
  size_t size() const { return batch->length(row); }
  py::list ids() const {
    py::list out(size());
    for (size_t k = 0; k < size(); ++k) out[k] = py::int_(batch->ids[begin() + k]);
    return out;
  }
  py::list type_ids() const {
    py::list out(size());
    for (size_t k = 0; k < size(); ++k) out[k] = py::int_(batch->type_ids[begin() + k]);
    return out;
  }
  py::list attention_mask() const {
    py::list out(size());
    for (size_t k = 0; k < size(); ++k) out[k] = py::int_(1);
    return out;
  }
  py::list offsets() const {
    py::list out(size());
    for (size_t k = 0; k < size(); ++k) {
      const Offset& o = batch->offsets[begin() + k];
      out[k] = py::make_tuple(o.start, o.end);
    }
    return out;
  }
};

// tokenize() result: sequences kept native, padded on demand.
struct PyTokenized {
  Batch batch;
  std::shared_ptr<ThreadPool> pool;
  int64_t pad_id;

  py::array_t<int64_t> lengths() const {
    py::array_t<int64_t> out(static_cast<py::ssize_t>(batch->rows()));
    auto* p = out.mutable_data();
    for (size_t r = 0; r < batch->rows(); ++r) p[r] = static_cast<int64_t>(batch->length(r));
    return out;
  }

  py::tuple collate(const py::object& indices) const {
    const size_t n = batch->rows();
    std::vector<size_t> rows;
    if (!indices.is_none()) {
      auto idx = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(indices);
      if (!idx || idx.ndim() != 1) throw py::type_error("indices must be a 1-D sequence of int");
      rows.reserve(static_cast<size_t>(idx.size()));
      for (py::ssize_t j = 0; j < idx.size(); ++j) {
        int64_t i = idx.at(j);
        if (i < 0) i += static_cast<int64_t>(n);
        if (i < 0 || i >= static_cast<int64_t>(n)) {
          throw py::index_error("indices[" + std::to_string(j) + "] = " +
                                std::to_string(idx.at(j)) + " is out of range for " +
                                std::to_string(n) + " sequences");
        }
        rows.push_back(static_cast<size_t>(i));
      }
    }
    const size_t n_rows = indices.is_none() ? n : rows.size();
    size_t width = 0;
    for (size_t j = 0; j < n_rows; ++j) width = std::max(width, batch->length(rows.empty() ? j : rows[j]));
    const std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(n_rows),
                                         static_cast<py::ssize_t>(width)};
    py::array_t<int64_t> ids(shape), mask(shape), types(shape);
    const PaddedBuffers out{ids.mutable_data(), mask.mutable_data(), types.mutable_data(), width};
    {
      py::gil_scoped_release release;
      textfleet::collate(*batch, rows.empty() ? nullptr : rows.data(), n_rows, pad_id, out, pool.get());
    }
    return py::make_tuple(ids, mask, types);
  }
};

TemplatePiece template_piece(const std::tuple<std::string, std::vector<int32_t>, uint32_t>& t) {
  const auto& [kind, ids, type_id] = t;
  if (kind == "A") return {TemplatePiece::kSequenceA, {}, type_id};
  if (kind == "B") return {TemplatePiece::kSequenceB, {}, type_id};
  if (kind == "special") return {TemplatePiece::kSpecial, ids, type_id};
  throw py::value_error("template piece kind must be 'A', 'B' or 'special', got '" + kind + "'");
}

using PyTemplate = std::vector<std::tuple<std::string, std::vector<int32_t>, uint32_t>>;

class PyTokenizer {
 public:
  PyTokenizer(std::vector<std::pair<std::string, int32_t>> vocab, int32_t unk_id,
              std::string continuing_subword_prefix, size_t max_input_chars_per_word,
              bool clean_text, bool handle_chinese_chars, bool strip_accents, bool lowercase,
              std::vector<std::pair<std::string, int32_t>> added_tokens, const PyTemplate& single,
              const PyTemplate& pair, size_t max_length, int32_t pad_id, size_t num_threads,
              size_t scan_bytes) {
    if (num_threads < 1) throw py::value_error("num_threads must be >= 1");
    TokenizerConfig c;
    c.wordpiece = {std::move(vocab), unk_id, std::move(continuing_subword_prefix),
                   max_input_chars_per_word};
    c.normalizer = {clean_text, handle_chinese_chars, strip_accents, lowercase};
    for (auto& [content, id] : added_tokens) c.added_tokens.push_back({std::move(content), id});
    for (const auto& p : single) c.single_template.push_back(template_piece(p));
    for (const auto& p : pair) c.pair_template.push_back(template_piece(p));
    c.max_length = max_length;
    c.pad_id = pad_id;
    c.scan_bytes = scan_bytes;
    try {
      tok_ = std::make_shared<const Tokenizer>(std::move(c));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
    pool_ = std::make_shared<ThreadPool>(num_threads);
  }

  PyEncoding encode(const py::handle& text, const py::handle& pair, bool add_special) const {
    const std::string_view t = utf8_of(text.ptr(), "text");
    std::optional<std::string_view> p;
    if (!pair.is_none()) p = utf8_of(pair.ptr(), "pair");
    auto batch = std::make_shared<EncodedBatch>();
    {
      py::gil_scoped_release release;
      thread_local Encoding enc;
      tok_->encode(t, p ? &*p : nullptr, add_special, enc, true);
      batch->append(enc);
    }
    return PyEncoding{std::move(batch), 0};
  }

  py::list encode_batch(const py::handle& texts, const py::handle& pairs, bool add_special) const {
    Batch batch = run_batch(texts, pairs, add_special, true);
    py::list out(batch->rows());
    for (size_t r = 0; r < batch->rows(); ++r) out[r] = py::cast(PyEncoding{batch, r});
    return out;
  }

  PyTokenized tokenize(const py::handle& texts, const py::handle& pairs, bool add_special) const {
    return PyTokenized{run_batch(texts, pairs, add_special, false), pool_, tok_->pad_id()};
  }

  size_t max_length() const { return tok_->max_length(); }
  int32_t pad_id() const { return tok_->pad_id(); }
  size_t num_threads() const { return pool_->threads(); }
  uint64_t scanned_bytes() const { return tok_->scanned_bytes(); }
  const std::shared_ptr<const Tokenizer>& tokenizer() const { return tok_; }

 private:
  Batch run_batch(const py::handle& texts, const py::handle& pairs, bool add_special,
                  bool with_offsets) const {
    const Utf8Inputs a = utf8_inputs(texts, "texts");
    std::optional<Utf8Inputs> b;
    if (!pairs.is_none()) {
      b = utf8_inputs(pairs, "pairs");
      if (b->views.size() != a.views.size()) {
        throw py::value_error("pairs has " + std::to_string(b->views.size()) +
                              " items but texts has " + std::to_string(a.views.size()));
      }
    }
    auto batch = std::make_shared<EncodedBatch>();
    py::gil_scoped_release release;
    textfleet::encode_batch(*tok_, a.views.data(), b ? b->views.data() : nullptr, a.views.size(),
                 add_special, with_offsets, pool_.get(), *batch);
    return batch;
  }

  std::shared_ptr<const Tokenizer> tok_;
  std::shared_ptr<ThreadPool> pool_;
};

}  // namespace

std::shared_ptr<const Tokenizer> tokenizer_from_python(const py::handle& obj) {
  if (!py::isinstance<PyTokenizer>(obj)) {
    throw py::type_error(std::string("expected engine._native.WordPieceTokenizer, got ") +
                         Py_TYPE(obj.ptr())->tp_name);
  }
  return obj.cast<const PyTokenizer&>().tokenizer();
}

void register_tokenizer(py::module_& m) {
  py::class_<PyEncoding>(m, "Encoding", "One encoded text or pair (padding off).")
      .def_property_readonly("ids", &PyEncoding::ids, "Token ids.")
      .def_property_readonly("type_ids", &PyEncoding::type_ids, "Token type (segment) ids.")
      .def_property_readonly("attention_mask", &PyEncoding::attention_mask, "All ones.")
      .def_property_readonly("offsets", &PyEncoding::offsets,
                             "(start, end) code point offsets into the input; (0, 0) for specials.")
      .def("__len__", &PyEncoding::size)
      .def("__repr__", [](const PyEncoding& e) {
        return "<Encoding of " + std::to_string(e.size()) + " tokens>";
      });

  py::class_<PyTokenized>(m, "Tokenized", "Token sequences held natively, padded on demand.")
      .def_property_readonly("lengths", &PyTokenized::lengths, "int64 token count per sequence.")
      .def("__len__", [](const PyTokenized& t) { return t.batch->rows(); })
      .def("collate", &PyTokenized::collate, py::arg("indices") = py::none(),
           "Pads the given sequences (all when None) to the longest of them: a tuple of int64 "
           "arrays (input_ids, attention_mask, token_type_ids) of shape [rows, width].");

  py::class_<PyTokenizer>(m, "WordPieceTokenizer",
                          "BERT WordPiece tokenizer equal to Hugging Face tokenizers.")
      .def(py::init<std::vector<std::pair<std::string, int32_t>>, int32_t, std::string, size_t,
                    bool, bool, bool, bool, std::vector<std::pair<std::string, int32_t>>,
                    const PyTemplate&, const PyTemplate&, size_t, int32_t, size_t, size_t>(),
           py::kw_only(), py::arg("vocab"), py::arg("unk_id"),
           py::arg("continuing_subword_prefix"), py::arg("max_input_chars_per_word"),
           py::arg("clean_text"), py::arg("handle_chinese_chars"), py::arg("strip_accents"),
           py::arg("lowercase"), py::arg("added_tokens"), py::arg("single"), py::arg("pair"),
           py::arg("max_length"), py::arg("pad_id"), py::arg("num_threads"),
           py::arg("scan_bytes") = 0,
           "Template pieces are (kind, ids, type_id) with kind 'A', 'B' or 'special'. "
           "scan_bytes: bytes of text normalized per step (0: sized from the tokens still "
           "needed, so the work stops near max_length; tests set a small fixed step).")
      .def("encode", &PyTokenizer::encode, py::arg("text"), py::arg("pair") = py::none(),
           py::arg("add_special_tokens") = true, "Encodes one text (or pair).")
      .def("encode_batch", &PyTokenizer::encode_batch, py::arg("texts"),
           py::arg("pairs") = py::none(), py::arg("add_special_tokens") = true,
           "Encodes texts on num_threads threads with the GIL released.")
      .def("tokenize", &PyTokenizer::tokenize, py::arg("texts"), py::arg("pairs") = py::none(),
           py::arg("add_special_tokens") = true,
           "Like encode_batch, but keeps the sequences native for collate().")
      .def_property_readonly("max_length", &PyTokenizer::max_length)
      .def_property_readonly("pad_id", &PyTokenizer::pad_id)
      .def_property_readonly("num_threads", &PyTokenizer::num_threads)
      .def_property_readonly("scanned_bytes", &PyTokenizer::scanned_bytes,
                             "Bytes of input text normalized since construction (all threads).");
}

}  // namespace textfleet

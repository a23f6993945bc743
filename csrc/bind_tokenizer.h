// For other binding files (e.g. the scheduler's): the C++ tokenizer behind a
// Python engine._native.WordPieceTokenizer, shared, so a native component can
// keep tokenizing after the Python object is gone.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "tokenizer.h"

namespace textfleet {

// Throws pybind11::type_error if obj is not a WordPieceTokenizer.
std::shared_ptr<const Tokenizer> tokenizer_from_python(const pybind11::handle& obj);

}  // namespace textfleet

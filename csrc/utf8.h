// UTF-8 decoding shared by the normalizer and the added-token splitter, so
// both count code points the same way (invalid bytes: one U+FFFD each).
#pragma once

#include <cstddef>
#include <cstdint>

namespace textfleet::utf8 {

inline bool continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

// Decodes the code point at p (p < end); sets *len to the bytes it used.
inline uint32_t decode(const uint8_t* p, const uint8_t* end, size_t* len) {
  const uint8_t b0 = p[0];
  const size_t avail = static_cast<size_t>(end - p);
  if (b0 < 0x80) {
    *len = 1;
    return b0;
  }
  if (b0 >= 0xC2 && b0 <= 0xDF && avail >= 2 && continuation(p[1])) {
    *len = 2;
    return (uint32_t(b0 & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (b0 >= 0xE0 && b0 <= 0xEF && avail >= 3 && continuation(p[1]) && continuation(p[2])) {
    const uint32_t cp = (uint32_t(b0 & 0x0F) << 12) | (uint32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) {
      *len = 3;
      return cp;
    }
  }
  if (b0 >= 0xF0 && b0 <= 0xF4 && avail >= 4 && continuation(p[1]) && continuation(p[2]) &&
      continuation(p[3])) {
    const uint32_t cp = (uint32_t(b0 & 0x07) << 18) | (uint32_t(p[1] & 0x3F) << 12) |
                        (uint32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
    if (cp >= 0x10000 && cp <= 0x10FFFF) {
      *len = 4;
      return cp;
    }
  }
  *len = 1;
  return 0xFFFD;
}

// Code points in [p, p + n), counted as decode() reads them.
inline size_t count(const char* s, size_t n) {
  const auto* p = reinterpret_cast<const uint8_t*>(s);
  const uint8_t* end = p + n;
  size_t chars = 0;
  while (p < end) {
    if (*p < 0x80) {
      ++p;
    } else {
      size_t len;
      decode(p, end, &len);
      p += len;
    }
    ++chars;
  }
  return chars;
}

}  // namespace textfleet::utf8

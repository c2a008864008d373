// Argument checking shared by the N-API entry points: throwing a TypeError / RangeError, reading a
// typed array of one element type, and reading an integer in a range.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

// Throw a TypeError / RangeError; the return value is what the entry point hands back to JS.
inline Napi::Value throwType(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

inline Napi::Value throwRange(Napi::Env env, const std::string& msg) {
  Napi::RangeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

// A typed array of element type `want` (on ArrayBuffer or SharedArrayBuffer): its data (byteOffset
// included) and its length in elements. False, with nothing thrown, if v is anything else.
template <typename T>
bool typedArray(napi_env env, napi_value v, napi_typedarray_type want, T** data, size_t* length) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  size_t byteOffset = 0;
  void* p = nullptr;
  napi_value buffer;
  if (napi_get_typedarray_info(env, v, &type, length, &p, &buffer, &byteOffset) != napi_ok) return false;
  if (type != want) return false;
  *data = (T*)p;
  return true;
}

// A JS number that is an integer in [lo, hi]; false, with nothing thrown, otherwise.
inline bool intArg(const Napi::Value& v, int64_t lo, int64_t hi, int64_t* out) {
  if (!v.IsNumber()) return false;
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d) return false;
  *out = (int64_t)d;
  return true;
}

}  // namespace moe

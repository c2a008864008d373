// N-API entry point. Kernels are registered from their own files.
#include <napi.h>

static Napi::Value Version(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), 1);
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("version", Napi::Function::New(env, Version));
  return exports;
}

NODE_API_MODULE(moe_native, Init)

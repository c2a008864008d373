// Positioned reads into caller-owned buffers (ArrayBuffer or SharedArrayBuffer views), run on libuv's
// thread pool so the JS thread keeps computing while experts load.
//
//   openFile(path, direct) -> fd        synchronous open(2); direct = O_DIRECT
//   closeFile(fd)                       close(2); reads still in flight on fd then fail with EBADF
//   readInto(fd, position, dst) -> Promise<number>   fills all of dst from `position`, resolves with
//                                        dst.byteLength; rejects on an error or an early end of file
//
// O_DIRECT needs the file position, the length and the memory address to be multiples of the device's
// logical block size. Expert ranges inside a GGUF file are only 32-byte aligned, so rather than asking
// callers to align their slots we read the covering block-aligned range through a small aligned scratch
// buffer (at most kScratchBytes per read in flight) and copy out the wanted bytes. When the caller's
// request is already aligned, the read goes straight into dst.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace moe {
namespace {

constexpr size_t kDirectAlign = 4096;          // safe for 512- and 4096-byte logical blocks
constexpr size_t kScratchBytes = 4u << 20;     // per direct read in flight

struct OpenFile { std::string path; bool direct; };

// fd -> what was opened, for error messages and the direct flag. Worker threads have their own JS
// environments but share this process-wide table.
std::mutex filesMutex;
std::unordered_map<int, OpenFile> files;

std::string errnoText(int e) {
  char buf[256];
  // GNU strerror_r may return a static string instead of filling buf.
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  const char* s = strerror_r(e, buf, sizeof buf);
  return s;
#else
  if (strerror_r(e, buf, sizeof buf) != 0) return "errno " + std::to_string(e);
  return buf;
#endif
}

const char* errnoName(int e) {
  switch (e) {
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case EIO: return "EIO";
    case EISDIR: return "EISDIR";
    case ENOMEM: return "ENOMEM";
    case EMFILE: return "EMFILE";
    case EPERM: return "EPERM";
    default: return "EUNKNOWN";
  }
}

Napi::Error makeError(Napi::Env env, const std::string& msg, const char* code, int err) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  if (err) e.Set("errno", Napi::Number::New(env, err));
  return e;
}

Napi::Value OpenFileFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "openFile: expected (path: string, direct: boolean)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const bool direct = info.Length() > 1 && info[1].ToBoolean().Value();
  int flags = O_RDONLY | O_CLOEXEC;
#ifdef O_DIRECT
  if (direct) flags |= O_DIRECT;
#else
  if (direct) {
    makeError(env, "openFile: direct I/O (O_DIRECT) is not available on this platform: " + path, "ENOTSUP", 0)
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
#endif
  int fd;
  do fd = open(path.c_str(), flags); while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int e = errno;
    std::string msg = direct && e == EINVAL
        ? "the filesystem holding " + path + " refuses direct I/O (O_DIRECT): " + errnoText(e)
        : "cannot open " + path + ": " + errnoText(e);
    makeError(env, msg, errnoName(e), e).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Expert reads jump around the file: no point in the kernel reading ahead of them.
  if (!direct) (void)posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  {
    std::lock_guard<std::mutex> lock(filesMutex);
    files[fd] = OpenFile{path, direct};
  }
  return Napi::Number::New(env, fd);
}

Napi::Value CloseFileFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "closeFile: expected (fd: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  {
    std::lock_guard<std::mutex> lock(filesMutex);
    if (files.erase(fd) == 0) {
      makeError(env, "closeFile: fd " + std::to_string(fd) + " was not opened by openFile or is already closed", "EBADF", EBADF)
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  close(fd);  // errors on close of a read-only fd carry no information we could act on
  return env.Undefined();
}

// Reads exactly len bytes at pos into p, looping over short reads and EINTR. Returns 0, or an errno,
// or -1 for an early end of file (*got says how many bytes there were).
int preadFull(int fd, uint8_t* p, size_t len, uint64_t pos, size_t* got) {
  size_t done = 0;
  while (done < len) {
    const ssize_t n = pread(fd, p + done, len - done, (off_t)(pos + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      *got = done;
      return errno;
    }
    if (n == 0) break;
    done += (size_t)n;
  }
  *got = done;
  return done == len ? 0 : -1;
}

class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, int fd, const OpenFile& file, uint64_t position, uint8_t* dst, size_t length,
             Napi::Object keepAlive)
      : Napi::AsyncWorker(env, "moeReadInto"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fd_(fd), path_(file.path), direct_(file.direct), position_(position), dst_(dst), length_(length) {
    keep_ = Napi::Persistent(keepAlive);  // the buffer must outlive the read
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    if (length_ == 0) return;
    if (!direct_) {
      size_t got = 0;
      const int r = preadFull(fd_, dst_, length_, position_, &got);
      if (r != 0) fail(r, got, position_ + got);
      return;
    }
    const bool aligned = (uintptr_t)dst_ % kDirectAlign == 0 && position_ % kDirectAlign == 0 && length_ % kDirectAlign == 0;
    if (aligned) {
      size_t got = 0;
      const int r = preadFull(fd_, dst_, length_, position_, &got);
      if (r != 0) fail(r, got, position_ + got);
      return;
    }
    // Covering aligned range [start, end), read through the scratch buffer in chunks.
    const uint64_t want0 = position_, want1 = position_ + length_;
    const uint64_t start = want0 / kDirectAlign * kDirectAlign;
    const uint64_t end = (want1 + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
    const size_t scratchBytes = (size_t)std::min<uint64_t>(end - start, kScratchBytes);
    void* scratch = nullptr;
    if (posix_memalign(&scratch, kDirectAlign, scratchBytes) != 0) {
      fail(ENOMEM, 0, position_);
      return;
    }
    for (uint64_t at = start; at < end; at += scratchBytes) {
      const size_t chunk = (size_t)std::min<uint64_t>(scratchBytes, end - at);
      size_t got = 0;
      const int r = preadFull(fd_, (uint8_t*)scratch, chunk, at, &got);
      // The last chunk may run past the end of the file (alignment padding): fine if the wanted bytes are there.
      const uint64_t have = at + got;
      const uint64_t need = std::min<uint64_t>(at + chunk, want1);
      if (r > 0 || have < need) {
        free(scratch);
        fail(r > 0 ? r : -1, (size_t)(std::max(have, want0) - want0), std::max(have, want0));
        return;
      }
      const uint64_t c0 = std::max(at, want0), c1 = std::min<uint64_t>(at + chunk, want1);
      if (c1 > c0) memcpy(dst_ + (c0 - want0), (uint8_t*)scratch + (c0 - at), (size_t)(c1 - c0));
    }
    free(scratch);
  }

  void OnOK() override {
    deferred_.Resolve(Napi::Number::New(Env(), (double)length_));
  }

  void OnError(const Napi::Error& e) override {
    Napi::Error err = makeError(Env(), e.Message(), code_, errno_ > 0 ? errno_ : 0);
    err.Set("path", Napi::String::New(Env(), path_));
    err.Set("position", Napi::Number::New(Env(), (double)position_));
    err.Set("length", Napi::Number::New(Env(), (double)length_));
    deferred_.Reject(err.Value());
  }

 private:
  // Runs on the pool thread: only plain C++ here; the JS error is built in OnError.
  void fail(int err, size_t got, uint64_t at) {
    const std::string where = " (" + std::to_string(length_) + " bytes at offset " + std::to_string(position_) + ")";
    if (err < 0) {
      code_ = "EOF";
      errno_ = 0;
      SetError("unexpected end of file reading " + path_ + where + ": got " + std::to_string(got) +
               " bytes; the file is shorter than expected (did it change since it was opened?)");
      return;
    }
    code_ = errnoName(err);
    errno_ = err;
    std::string msg = "read error in " + path_ + where + " at offset " + std::to_string(at) + ": " + errnoText(err);
    if (direct_ && err == EINVAL) msg += " (the filesystem refuses direct I/O / O_DIRECT)";
    SetError(msg);
  }

  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference keep_;
  const int fd_;
  const std::string path_;
  const bool direct_;
  const uint64_t position_;
  uint8_t* const dst_;
  const size_t length_;
  const char* code_ = "EIO";
  int errno_ = 0;
};

// readInto(fd, position, dst: Uint8Array) -> Promise<number>
Napi::Value ReadIntoFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsTypedArray()) {
    Napi::TypeError::New(env, "readInto: expected (fd: number, position: number, dst: Uint8Array)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  const double posD = info[1].As<Napi::Number>().DoubleValue();
  if (!(posD >= 0 && posD <= 9007199254740991.0) || posD != (double)(uint64_t)posD) {
    Napi::RangeError::New(env, "readInto: position must be a non-negative integer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(env, "readInto: dst must be a Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  napi_typedarray_type type;
  size_t length = 0, byteOffset = 0;
  void* data = nullptr;
  napi_value buffer;
  if (napi_get_typedarray_info(env, ta, &type, &length, &data, &buffer, &byteOffset) != napi_ok) {
    Napi::TypeError::New(env, "readInto: cannot access dst").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  OpenFile file;
  {
    std::lock_guard<std::mutex> lock(filesMutex);
    auto it = files.find(fd);
    if (it == files.end()) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Reject(makeError(env, "readInto: fd " + std::to_string(fd) + " is not open (closed, or not opened by openFile)", "EBADF", EBADF).Value());
      return d.Promise();
    }
    file = it->second;
  }
  auto* w = new ReadWorker(env, fd, file, (uint64_t)posD, (uint8_t*)data, length, ta);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void RegisterIo(Napi::Env env, Napi::Object exports) {
  exports.Set("openFile", Napi::Function::New(env, OpenFileFn));
  exports.Set("closeFile", Napi::Function::New(env, CloseFileFn));
  exports.Set("readInto", Napi::Function::New(env, ReadIntoFn));
}

}  // namespace moe

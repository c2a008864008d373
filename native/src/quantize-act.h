// Converts activation rows to a weight type's vec-dot type, once per matmul call.
#pragma once
#include <vector>
#include "kernels.h"

namespace moe {

class ActBuffers {
 public:
  // x: nTokens rows of cols floats; cols is a multiple of the kind's block size (checked by the caller).
  ActBuffers(ActKind kind, const float* x, int nTokens, int cols);
  const Act& view() const { return act_; }

 private:
  std::vector<uint16_t> h_;
  std::vector<int8_t> qs_;
  std::vector<float> d_, s_;
  std::vector<int16_t> bsums_;
  std::vector<int32_t> q4Offset_;
  Act act_;
};

}  // namespace moe

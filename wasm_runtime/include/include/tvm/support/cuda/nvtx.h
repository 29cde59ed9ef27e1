/*
 * Astro Agent Edge (AAE) -- stand-in for a header that the apache-tvm wheel does not ship.
 * SPDX-License-Identifier: Apache-2.0
 *
 * The Relax VM and the paged KV cache open NVTX profiling ranges (`support::NVTXScopedRange`)
 * around work they launch. NVTX is a CUDA profiler API; a wasm/WebGPU runtime has no NVTX, so the
 * range is a no-op RAII object that the compiler removes entirely.
 */
#ifndef AAE_TVM_SUPPORT_CUDA_NVTX_H_
#define AAE_TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

/*! \brief Scoped profiler range; does nothing in builds without NVTX (all wasm builds). */
class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char* /*name*/) {}
  explicit NVTXScopedRange(const std::string& /*name*/) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // AAE_TVM_SUPPORT_CUDA_NVTX_H_

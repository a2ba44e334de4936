/*
 * webrt: support::NVTXScopedRange for TVM's runtime sources.
 *
 * Written for webrt. NVTX ranges annotate CUDA profiles; the web runtime has no NVTX, so the
 * range is an empty RAII object that only accepts the names the call sites pass.
 */
#ifndef WEBRT_TVM_SUPPORT_CUDA_NVTX_H_
#define WEBRT_TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

/*! \brief A profiling range covering its own lifetime; a no-op without NVTX. */
class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char* /*name*/) {}
  explicit NVTXScopedRange(const std::string& /*name*/) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // WEBRT_TVM_SUPPORT_CUDA_NVTX_H_

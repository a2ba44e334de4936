/*
 * webrt: string helpers used by TVM's runtime sources (support::StartsWith).
 *
 * Written for webrt from the call sites in tvm/src/runtime.
 */
#ifndef WEBRT_TVM_SRC_SUPPORT_UTILS_H_
#define WEBRT_TVM_SRC_SUPPORT_UTILS_H_

#include <string>

namespace tvm {
namespace support {

/*! \brief Whether `str` begins with `prefix`. */
inline bool StartsWith(const std::string& str, const std::string& prefix) {
  return str.size() >= prefix.size() && str.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace support
}  // namespace tvm

#endif  // WEBRT_TVM_SRC_SUPPORT_UTILS_H_

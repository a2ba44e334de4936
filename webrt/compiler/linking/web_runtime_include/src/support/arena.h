/*
 * webrt: support::Arena, a bump allocator for short-lived RPC scratch data.
 *
 * Written for webrt from the call sites in tvm/src/runtime/rpc/rpc_endpoint.cc: memory from
 * allocate_<T>(n) stays valid until RecycleAll(), which makes all of it reusable at once.
 */
#ifndef WEBRT_TVM_SRC_SUPPORT_ARENA_H_
#define WEBRT_TVM_SRC_SUPPORT_ARENA_H_

#include <algorithm>
#include <cstddef>
#include <memory>
#include <type_traits>
#include <vector>

namespace tvm {
namespace support {

/*! \brief Allocates from large pages; frees nothing until RecycleAll() or destruction. */
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  /*! \brief Uninitialized storage for `count` objects of a trivial type T. */
  template <typename T>
  T* allocate_(int count) {
    static_assert(std::is_trivial<T>::value, "Arena only holds trivial types");
    size_t n = count > 0 ? static_cast<size_t>(count) : 0;
    return static_cast<T*>(Allocate(sizeof(T) * n, alignof(T)));
  }

  /*! \brief Make all memory reusable; earlier pointers become invalid. */
  void RecycleAll() {
    // Keep the largest page for reuse, release the others.
    if (pages_.size() > 1) {
      auto largest = std::max_element(pages_.begin(), pages_.end(),
                                       [](const Page& a, const Page& b) { return a.size < b.size; });
      Page keep = std::move(*largest);
      pages_.clear();
      pages_.push_back(std::move(keep));
    }
    used_ = 0;
  }

 private:
  struct Page {
    std::unique_ptr<std::max_align_t[]> data;
    size_t size;
  };
  static constexpr size_t kPageSize = 16 * 1024;

  void* Allocate(size_t nbytes, size_t align) {
    if (!pages_.empty()) {
      size_t offset = (used_ + align - 1) / align * align;
      if (offset + nbytes <= pages_.back().size) {
        used_ = offset + nbytes;
        return reinterpret_cast<char*>(pages_.back().data.get()) + offset;
      }
    }
    size_t size = std::max(kPageSize, nbytes + align);
    size_t units = (size + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
    pages_.push_back(Page{std::make_unique<std::max_align_t[]>(units),
                          units * sizeof(std::max_align_t)});
    used_ = nbytes;
    return pages_.back().data.get();
  }

  std::vector<Page> pages_;
  size_t used_{0};  // bytes used in pages_.back()
};

}  // namespace support
}  // namespace tvm

#endif  // WEBRT_TVM_SRC_SUPPORT_ARENA_H_

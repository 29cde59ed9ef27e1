/*
 * Astro Agent Edge (AAE) -- stand-in for a header that the apache-tvm wheel does not ship.
 * SPDX-License-Identifier: Apache-2.0
 *
 * A bump-pointer arena for short-lived, trivially destructible allocations. The RPC endpoint
 * (and minrpc) decode each message's arguments into arena memory and drop all of it at once
 * with RecycleAll() when the message is handled.
 *
 * Memory comes in pages from a PageAllocator policy:
 *   ArenaPageHeader* allocate(size_t min_size);  // page of >= min_size bytes, header filled in
 *   void deallocate(ArenaPageHeader* page);
 * The header sits at the start of each page; `offset` is the first free byte (relative to the
 * header), `size` the page's total size. RecycleAll() keeps pages for reuse; FreeAll() returns
 * them to the allocator.
 */
#ifndef AAE_TVM_SRC_SUPPORT_ARENA_H_
#define AAE_TVM_SRC_SUPPORT_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <utility>

namespace tvm {
namespace support {

/*! \brief Header at the start of every arena page. */
struct ArenaPageHeader {
  /*! \brief Next page in the arena's used or free list. */
  ArenaPageHeader* next{nullptr};
  /*! \brief Total bytes of the page, header included. */
  size_t size{0};
  /*! \brief Offset of the first free byte from the start of the page. */
  size_t offset{0};
};

/*! \brief Default page source: malloc'ed pages of at least kPageSize bytes. */
class SimplePageAllocator {
 public:
  static constexpr size_t kPageSize = 16 << 10;

  ArenaPageHeader* allocate(size_t min_size) {
    const size_t size = min_size > kPageSize ? min_size : kPageSize;
    void* mem = std::malloc(size);
    if (mem == nullptr) throw std::bad_alloc();
    ArenaPageHeader* page = new (mem) ArenaPageHeader();
    page->size = size;
    page->offset = sizeof(ArenaPageHeader);
    return page;
  }

  void deallocate(ArenaPageHeader* page) { std::free(page); }
};

/*! \brief Arena over pages obtained from PageAllocator. Not thread-safe. */
template <typename PageAllocator>
class GenericArena {
 public:
  explicit GenericArena(PageAllocator alloc = PageAllocator()) : alloc_(std::move(alloc)) {}
  GenericArena(const GenericArena&) = delete;
  GenericArena& operator=(const GenericArena&) = delete;
  ~GenericArena() { FreeAll(); }

  /*! \brief Allocate `size` bytes aligned to `align` (a power of two). Never returns null. */
  void* Alloc(size_t size, size_t align = alignof(std::max_align_t)) {
    if (head_ != nullptr) {
      if (void* p = TryBump(head_, size, align)) return p;
    }
    // Worst case the page start needs `align - 1` bytes of padding after the header.
    const size_t need = sizeof(ArenaPageHeader) + size + align;
    ArenaPageHeader* page = TakeFreePage(need);
    if (page == nullptr) page = alloc_.allocate(need);
    page->next = head_;
    head_ = page;
    void* p = TryBump(head_, size, align);
    return p;
  }

  /*! \brief Uninitialised storage for `count` objects of trivial type T. */
  template <typename T>
  T* allocate_(int count) {
    static_assert(std::is_trivially_destructible<T>::value,
                  "arena memory is never destroyed; T must be trivially destructible");
    const size_t n = count > 0 ? static_cast<size_t>(count) : 0;
    return static_cast<T*>(Alloc(sizeof(T) * n, alignof(T)));
  }

  /*! \brief Construct a trivially destructible T in the arena. */
  template <typename T, typename... Args>
  T* make(Args&&... args) {
    static_assert(std::is_trivially_destructible<T>::value,
                  "arena memory is never destroyed; T must be trivially destructible");
    return new (Alloc(sizeof(T), alignof(T))) T(std::forward<Args>(args)...);
  }

  /*! \brief Forget every allocation but keep the pages for reuse. */
  void RecycleAll() {
    while (head_ != nullptr) {
      ArenaPageHeader* page = head_;
      head_ = page->next;
      page->offset = sizeof(ArenaPageHeader);
      page->next = free_;
      free_ = page;
    }
  }

  /*! \brief Return every page to the allocator. */
  void FreeAll() {
    RecycleAll();
    while (free_ != nullptr) {
      ArenaPageHeader* page = free_;
      free_ = page->next;
      alloc_.deallocate(page);
    }
  }

 private:
  static void* TryBump(ArenaPageHeader* page, size_t size, size_t align) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(page);
    const uintptr_t start = (base + page->offset + align - 1) & ~(static_cast<uintptr_t>(align) - 1);
    const size_t end = static_cast<size_t>(start - base) + size;
    if (end > page->size) return nullptr;
    page->offset = end;
    return reinterpret_cast<void*>(start);
  }

  /*! \brief Unlink and return a recycled page with at least `need` bytes, if any. */
  ArenaPageHeader* TakeFreePage(size_t need) {
    ArenaPageHeader** link = &free_;
    while (*link != nullptr) {
      if ((*link)->size >= need) {
        ArenaPageHeader* page = *link;
        *link = page->next;
        page->next = nullptr;
        page->offset = sizeof(ArenaPageHeader);
        return page;
      }
      link = &(*link)->next;
    }
    return nullptr;
  }

  PageAllocator alloc_;
  ArenaPageHeader* head_{nullptr};  // pages in use, newest first
  ArenaPageHeader* free_{nullptr};  // recycled pages
};

/*! \brief The arena the RPC endpoint uses. */
using Arena = GenericArena<SimplePageAllocator>;

}  // namespace support
}  // namespace tvm

#endif  // AAE_TVM_SRC_SUPPORT_ARENA_H_

/*
 * Astro Agent Edge (AAE) -- stand-in for a header that the apache-tvm wheel does not ship.
 * SPDX-License-Identifier: Apache-2.0
 *
 * A growable FIFO byte queue stored as a ring. The RPC endpoint queues incoming and outgoing
 * message bytes in two of these: channel I/O goes in and out through the *WithCallback methods
 * (which hand the callback a contiguous region of the ring), protocol decoding through
 * Read/Write.
 */
#ifndef AAE_TVM_SRC_SUPPORT_RING_BUFFER_H_
#define AAE_TVM_SRC_SUPPORT_RING_BUFFER_H_

#include <tvm/ffi/error.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  RingBuffer() : ring_(kInitCapacity) {}

  /*! \return Number of bytes queued and not yet read. */
  size_t bytes_available() const { return size_; }

  /*! \return Bytes the ring can hold without growing. */
  size_t capacity() const { return ring_.size(); }

  /*! \brief Make room for at least `n` queued bytes (existing bytes are kept, in order). */
  void Reserve(size_t n) {
    if (n <= ring_.size()) {
      // Shrink a ring that grew for one huge message once it is mostly idle again, so a long
      // session does not keep its peak buffer forever.
      if (ring_.size() > kShrinkThreshold && n * 4 < ring_.size() && size_ * 4 < ring_.size()) {
        Relayout(std::max({n, size_, kInitCapacity}));
      }
      return;
    }
    size_t cap = ring_.size();
    while (cap < n) cap *= 2;
    Relayout(cap);
  }

  /*! \brief Pop exactly `size` bytes into `data`; they must be available. */
  void Read(void* data, size_t size) {
    TVM_FFI_ICHECK_LE(size, size_) << "RingBuffer: read of " << size << " bytes but only "
                                   << size_ << " queued";
    char* out = static_cast<char*>(data);
    while (size != 0) {
      const size_t chunk = std::min(size, ContiguousReadable());
      std::memcpy(out, &ring_[head_], chunk);
      Consume(chunk);
      out += chunk;
      size -= chunk;
    }
  }

  /*! \brief Push `size` bytes, growing the ring if needed. */
  void Write(const void* data, size_t size) {
    Reserve(size_ + size);
    const char* in = static_cast<const char*>(data);
    while (size != 0) {
      const size_t chunk = std::min(size, ContiguousWritable());
      std::memcpy(&ring_[Tail()], in, chunk);
      size_ += chunk;
      in += chunk;
      size -= chunk;
    }
  }

  /*!
   * \brief Let `frecv(const void* data, size_t n) -> size_t` consume queued bytes.
   * Called once with a contiguous region of at most `max_nbytes`; returns how many bytes the
   * callback took (which are then removed).
   */
  template <typename FRecv>
  size_t ReadWithCallback(FRecv frecv, size_t max_nbytes) {
    const size_t n = std::min(max_nbytes, ContiguousReadable());
    if (n == 0) return 0;
    const size_t taken = frecv(static_cast<const void*>(&ring_[head_]), n);
    TVM_FFI_ICHECK_LE(taken, n);
    Consume(taken);
    return taken;
  }

  /*!
   * \brief Let `fsend(void* data, size_t n) -> size_t` fill up to `max_nbytes` bytes.
   * The ring grows first so the callback gets one contiguous region of `max_nbytes`;
   * returns how many bytes the callback produced (0 usually means the channel closed).
   */
  template <typename FSend>
  size_t WriteWithCallback(FSend fsend, size_t max_nbytes) {
    if (max_nbytes == 0) return 0;
    Reserve(size_ + max_nbytes);
    if (ContiguousWritable() < max_nbytes) Relayout(ring_.size());  // unwrap: free space in one run
    const size_t got = fsend(static_cast<void*>(&ring_[Tail()]), max_nbytes);
    TVM_FFI_ICHECK_LE(got, max_nbytes);
    size_ += got;
    return got;
  }

 private:
  static constexpr size_t kInitCapacity = 1024;
  static constexpr size_t kShrinkThreshold = 1 << 20;

  size_t Tail() const { return (head_ + size_) % ring_.size(); }

  size_t ContiguousReadable() const { return std::min(size_, ring_.size() - head_); }

  size_t ContiguousWritable() const {
    const size_t tail = Tail();
    const size_t free_total = ring_.size() - size_;
    return std::min(free_total, ring_.size() - tail);
  }

  void Consume(size_t n) {
    head_ = (head_ + n) % ring_.size();
    size_ -= n;
    if (size_ == 0) head_ = 0;  // keeps future writes contiguous
  }

  /*! \brief Copy the queued bytes to the front of a fresh ring of `cap` bytes. */
  void Relayout(size_t cap) {
    std::vector<char> next(std::max(cap, size_));
    const size_t first = ContiguousReadable();
    if (first != 0) std::memcpy(next.data(), &ring_[head_], first);
    if (size_ > first) std::memcpy(next.data() + first, ring_.data(), size_ - first);
    ring_.swap(next);
    head_ = 0;
  }

  std::vector<char> ring_;
  size_t head_{0};  // index of the oldest queued byte
  size_t size_{0};  // number of queued bytes
};

}  // namespace support
}  // namespace tvm

#endif  // AAE_TVM_SRC_SUPPORT_RING_BUFFER_H_

// Astro Agent Edge -- native unit test of the replacement headers in wasm_runtime/include.
// SPDX-License-Identifier: Apache-2.0
//
// Built and run by tests/test_wasm_runtime.py::test_replacement_headers_native with the host
// compiler against the apache-tvm-ffi wheel's headers and libtvm_ffi.so.
//
// Usage: headers_test DIR
//   reads  DIR/halves.bin (uint16) and DIR/floats.bin (float32),
//   writes DIR/h2f.bin (float32) and DIR/f2h.bin (uint16) for the Python side to compare with
//   numpy, and checks base64, the serializer's byte format, the ring buffer, the arena and the
//   string helpers itself. Prints "ALL OK" and exits 0 on success.

#include <builtin_fp16.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/base64.h>
#include <tvm/ffi/string.h>
#include <tvm/support/cuda/nvtx.h>
#include <tvm/support/io.h>
#include <tvm/support/serializer.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "support/arena.h"
#include "support/base64.h"
#include "support/bytes_io.h"
#include "support/ring_buffer.h"
#include "support/utils.h"

using namespace tvm;

static int g_failures = 0;
#define EXPECT(cond)                                                         \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::cerr << __FILE__ << ":" << __LINE__ << ": FAILED " #cond "\n";    \
      ++g_failures;                                                          \
    }                                                                        \
  } while (0)

template <typename T>
static std::vector<T> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

template <typename T>
static void WriteFile(const std::string& path, const std::vector<T>& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(T));
}

static void TestFp16(const std::string& dir) {
  auto halves = ReadFile<uint16_t>(dir + "/halves.bin");
  std::vector<float> h2f;
  for (uint16_t h : halves) h2f.push_back(__extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(h));
  WriteFile(dir + "/h2f.bin", h2f);

  auto floats = ReadFile<float>(dir + "/floats.bin");
  std::vector<uint16_t> f2h;
  for (float f : floats) f2h.push_back(__truncXfYf2__<float, uint32_t, 23, uint16_t, uint16_t, 10>(f));
  WriteFile(dir + "/f2h.bin", f2h);

  // double -> half, spot checks (1.0 = 0x3C00, 65504 = 0x7BFF, overflow -> inf, -2 = 0xC000).
  auto d2h = [](double d) { return __truncXfYf2__<double, uint64_t, 52, uint16_t, uint16_t, 10>(d); };
  EXPECT(d2h(1.0) == 0x3C00);
  EXPECT(d2h(65504.0) == 0x7BFF);
  EXPECT(d2h(1e6) == 0x7C00);
  EXPECT(d2h(-2.0) == 0xC000);
  EXPECT(d2h(5.9604644775390625e-08) == 0x0001);  // smallest subnormal
  uint16_t nan = d2h(std::nan(""));
  EXPECT((nan & 0x7C00) == 0x7C00 && (nan & 0x03FF) != 0);
}

static std::string B64Encode(const std::string& raw) {
  std::string text;
  support::BytesOutStream out(&text);
  support::Base64OutStream b64(&out);
  b64.Write(raw.data(), raw.size());
  b64.Finish();
  return text;
}

static std::string B64Decode(const std::string& text, size_t n) {
  support::BytesInStream in(text);
  support::Base64InStream b64(&in);
  b64.InitPosition();
  std::string raw(n, '\0');
  size_t got = b64.Read(&raw[0], n);
  raw.resize(got);
  return raw;
}

static void TestBase64() {
  const char* vectors[][2] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                              {"foo", "Zm9v"},  {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
                              {"foobar", "Zm9vYmFy"}};
  for (auto& v : vectors) {
    EXPECT(B64Encode(v[0]) == v[1]);
    EXPECT(B64Decode(v[1], 100) == v[0]);
  }
  std::mt19937 rng(7);
  for (int n = 0; n < 300; ++n) {
    std::string raw(n, '\0');
    for (char& c : raw) c = static_cast<char>(rng());
    std::string text = B64Encode(raw);
    // Cross-check with tvm-ffi's own encoder.
    EXPECT(text == std::string(ffi::Base64Encode(ffi::Bytes(raw))));
    // Leading whitespace and line breaks inside the payload are skipped.
    std::string wrapped = "  \n";
    for (size_t i = 0; i < text.size(); ++i) {
      wrapped += text[i];
      if (i % 7 == 6) wrapped += "\r\n";
    }
    EXPECT(B64Decode(wrapped, raw.size() + 10) == raw);
  }
}

static void TestSerializer() {
  std::string blob;
  support::BytesOutStream out(&blob);
  out.Write(std::string("ab"));
  out.Write(std::vector<int32_t>{1, -2});
  out.Write(std::vector<std::string>{"x", ""});
  ffi::Array<DLDataType> dtypes{DLDataType{kDLFloat, 32, 1}, DLDataType{kDLInt, 64, 4}};
  out.Write(dtypes);
  ffi::Map<ffi::String, ffi::String> fmap{{"k", "vv"}};
  out.Write(fmap);
  out.Write(DLDevice{kDLWebGPU, 3});
  std::map<std::string, std::string> smap{{"a", "b"}};
  out.Write(smap);

  const unsigned char expect[] = {
      2, 0, 0, 0, 0, 0, 0, 0, 'a', 'b',                                 // string
      2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff,       // vector<int32>
      2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 'x', 0, 0, 0, 0, 0, 0, 0, 0,  // vec<str>
      2, 0, 0, 0, 0, 0, 0, 0, 2, 32, 1, 0, 0, 64, 4, 0,                 // Array<DLDataType>
      1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 'k', 2, 0, 0, 0, 0, 0, 0, 0, 'v', 'v',
      kDLWebGPU, 0, 0, 0, 3, 0, 0, 0,                                   // DLDevice
      1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 'a', 1, 0, 0, 0, 0, 0, 0, 0, 'b'};
  EXPECT(blob.size() == sizeof(expect));
  EXPECT(blob.size() == sizeof(expect) && std::memcmp(blob.data(), expect, sizeof(expect)) == 0);

  support::BytesInStream in(blob);
  std::string s;
  std::vector<int32_t> vi;
  std::vector<std::string> vs;
  ffi::Array<DLDataType> dt;
  ffi::Map<ffi::String, ffi::String> fm;
  DLDevice dev;
  std::unordered_map<std::string, std::string> um;
  EXPECT(in.Read(&s) && s == "ab");
  EXPECT(in.Read(&vi) && vi.size() == 2 && vi[1] == -2);
  EXPECT(in.Read(&vs) && vs.size() == 2 && vs[0] == "x" && vs[1].empty());
  EXPECT(in.Read(&dt) && dt.size() == 2 && dt[1].bits == 64 && dt[1].lanes == 4);
  EXPECT(in.Read(&fm) && fm.size() == 1 && fm.at("k") == "vv");
  EXPECT(in.Read(&dev) && dev.device_type == kDLWebGPU && dev.device_id == 3);
  EXPECT(in.Read(&um) && um.size() == 1 && um["a"] == "b");
  EXPECT(in.AtEnd());
  uint32_t extra;
  EXPECT(!in.Read(&extra));  // short read reports failure
}

static void TestRingBuffer() {
  support::RingBuffer ring;
  std::deque<char> model;
  std::mt19937 rng(3);
  char counter = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    int op = rng() % 4;
    size_t n = rng() % (iter % 1000 == 0 ? 50000 : 700);
    if (op == 0) {
      std::vector<char> data(n);
      for (char& c : data) model.push_back(c = counter++);
      ring.Write(data.data(), n);
    } else if (op == 1) {
      n = std::min(n, model.size());
      std::vector<char> data(n);
      ring.Read(data.data(), n);
      for (char c : data) {
        EXPECT(c == model.front());
        model.pop_front();
      }
    } else if (op == 2) {
      size_t got = ring.WriteWithCallback(
          [&](void* dst, size_t size) {
            size_t k = size / 2;
            for (size_t i = 0; i < k; ++i) model.push_back(static_cast<char*>(dst)[i] = counter++);
            return k;
          },
          n);
      EXPECT(got == n / 2);
    } else {
      ring.ReadWithCallback(
          [&](const void* src, size_t size) {
            for (size_t i = 0; i < size; ++i) {
              EXPECT(static_cast<const char*>(src)[i] == model.front());
              model.pop_front();
            }
            return size;
          },
          n);
    }
    EXPECT(ring.bytes_available() == model.size());
    if (iter % 5000 == 0) ring.Reserve(model.size() + 10);
  }
}

struct CountingAllocator {
  int* live;
  support::ArenaPageHeader* allocate(size_t min_size) {
    ++*live;
    return support::SimplePageAllocator().allocate(min_size);
  }
  void deallocate(support::ArenaPageHeader* page) {
    --*live;
    std::free(page);
  }
};

static void TestArena() {
  int live = 0;
  {
    support::GenericArena<CountingAllocator> arena(CountingAllocator{&live});
    std::mt19937 rng(5);
    for (int round = 0; round < 3; ++round) {
      std::vector<std::pair<char*, size_t>> blocks;
      for (int i = 0; i < 2000; ++i) {
        size_t n = rng() % (i % 100 == 0 ? 100000 : 300);
        size_t align = size_t{1} << (rng() % 7);
        char* p = static_cast<char*>(arena.Alloc(n, align));
        EXPECT(reinterpret_cast<uintptr_t>(p) % align == 0);
        std::memset(p, i & 0xff, n);
        blocks.push_back({p, n});
      }
      for (size_t i = 0; i < blocks.size(); ++i) {  // no block was overwritten by another
        for (size_t j = 0; j < blocks[i].second; ++j) {
          if (static_cast<unsigned char>(blocks[i].first[j]) != (i & 0xff)) {
            EXPECT(false);
            break;
          }
        }
      }
      double* d = arena.allocate_<double>(3);
      EXPECT(reinterpret_cast<uintptr_t>(d) % alignof(double) == 0);
      int pages_before = live;
      arena.RecycleAll();
      EXPECT(live == pages_before);  // pages kept for reuse
    }
    arena.FreeAll();
    EXPECT(live == 0);
    arena.Alloc(10);
    EXPECT(live == 1);
  }
  EXPECT(live == 0);  // destructor frees
}

static void TestUtils() {
  EXPECT(support::StartsWith("RPCSessionTimeoutError: x", "RPCSessionTimeoutError: "));
  EXPECT(!support::StartsWith("RPC", "RPCSession"));
  EXPECT(support::EndsWith("model.wasm", ".wasm"));
  EXPECT(support::IsNumber("0123") && !support::IsNumber("") && !support::IsNumber("1a"));
  auto parts = support::Split("a,,b", ',');
  EXPECT(parts.size() == 3 && parts[1].empty() && parts[2] == "b");
  EXPECT(support::Strip("  x y \n") == "x y");
  size_t h1 = 0, h2 = 0;
  support::HashCombine(h1, 1);
  support::HashCombine(h1, 2);
  support::HashCombine(h2, 2);
  support::HashCombine(h2, 1);
  EXPECT(h1 != h2);
  support::NVTXScopedRange range("noop");
  support::NVTXScopedRange range2(std::string("noop"));
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: headers_test DIR\n";
    return 2;
  }
  TestFp16(argv[1]);
  TestBase64();
  TestSerializer();
  TestRingBuffer();
  TestArena();
  TestUtils();
  if (g_failures != 0) {
    std::cout << g_failures << " FAILURES\n";
    return 1;
  }
  std::cout << "ALL OK\n";
  return 0;
}

#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace mlxb {

// One row of a GGUF tensor table, as the TypeScript side parsed it
// (src/engine/gguf-metadata.ts): the addon trusts none of it until checked.
struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;
  std::vector<int64_t> shape;  // ggml order: fastest-moving dimension first
  uint64_t offset = 0;         // from the start of the tensor data section
};

struct GgufTable {
  uint64_t data_offset = 0;  // absolute file offset of the tensor data section
  std::vector<GgufTensorInfo> tensors;
};

// A GGUF file opened read-only and memory-mapped read-only (a chmod 444 file
// or a symlink into a blob store loads). Every tensor of the table is checked
// against the file's length when the file is opened, before any data is read.
class GgufFile {
 public:
  GgufFile(const std::string& path, GgufTable table);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<GgufTensorInfo>& tensors() const { return table_.tensors; }
  const GgufTensorInfo* find(const std::string& name) const;
  // Values in the tensor (product of its shape) and its bytes in the file.
  static int64_t elements(const GgufTensorInfo& t);
  // The tensor's bytes inside the mapping.
  const uint8_t* data(const GgufTensorInfo& t) const;
  // Lets the kernel drop the tensor's pages once converted, so the mapping
  // does not keep a second copy of the weights resident.
  void release_pages(const GgufTensorInfo& t) const;
  // `[gguf] FILE: tensor NAME ...` errors.
  std::runtime_error error(const GgufTensorInfo& t, const std::string& what) const;

 private:
  void check(const GgufTensorInfo& t) const;

  std::string path_;
  GgufTable table_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
};

// float32 values of a tensor, exactly as ggml defines them.
std::vector<float> gguf_dequantize(const GgufFile& file, const GgufTensorInfo& t);

}  // namespace mlxb

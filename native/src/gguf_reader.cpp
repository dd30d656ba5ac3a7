#include "gguf_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "ggml_types.h"

namespace mlxb {

namespace {

constexpr int64_t MAX_ELEMENTS = int64_t{1} << 40;  // far above any real tensor, far below overflow

std::runtime_error file_error(const std::string& path, const std::string& what) {
  return std::runtime_error("[gguf] " + path + ": " + what);
}

}  // namespace

GgufFile::GgufFile(const std::string& path, GgufTable table) : path_(path), table_(std::move(table)) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    throw file_error(path, errno == ENOENT ? "file not found" : std::string("cannot open (") + std::strerror(errno) + ")");
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw file_error(path, "not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  try {
    if (table_.data_offset > size_) throw file_error(path, "tensor data starts past the end of the file");
    for (const auto& t : table_.tensors) check(t);
  } catch (...) {
    ::close(fd_);
    throw;
  }
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
      ::close(fd_);
      throw file_error(path, std::string("cannot map the file (") + std::strerror(errno) + ")");
    }
    map_ = static_cast<const uint8_t*>(p);
  }
}

GgufFile::~GgufFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
}

std::runtime_error GgufFile::error(const GgufTensorInfo& t, const std::string& what) const {
  return file_error(path_, "tensor '" + t.name + "' " + what);
}

int64_t GgufFile::elements(const GgufTensorInfo& t) {
  int64_t n = 1;
  for (auto d : t.shape) n *= d;  // bounded by check()
  return n;
}

// Shape, type and byte range, overflow-safe, against the file's length.
void GgufFile::check(const GgufTensorInfo& t) const {
  const auto block = ggml_block(t.type);
  if (!block) throw error(t, "has unsupported type " + ggml_type_name(t.type));
  if (t.shape.empty() || t.shape.size() > 4) throw error(t, "has " + std::to_string(t.shape.size()) + " dimensions");
  int64_t n = 1;
  for (auto d : t.shape) {
    if (d <= 0 || d > MAX_ELEMENTS || n > MAX_ELEMENTS / d) throw error(t, "has an invalid shape");
    n *= d;
  }
  if (t.shape[0] % block->elements != 0) {
    throw error(t, "has rows of " + std::to_string(t.shape[0]) + " values, not a multiple of its " +
                       ggml_type_name(t.type) + " block (" + std::to_string(block->elements) + ")");
  }
  const uint64_t bytes = static_cast<uint64_t>(n / block->elements) * static_cast<uint64_t>(block->bytes);
  const uint64_t room = size_ - table_.data_offset;
  if (t.offset > room || bytes > room - t.offset) {
    throw error(t, "extends past the end of the file (needs bytes " + std::to_string(table_.data_offset) + "+" +
                       std::to_string(t.offset) + "+" + std::to_string(bytes) + ", file is " +
                       std::to_string(size_) + ")");
  }
}

const GgufTensorInfo* GgufFile::find(const std::string& name) const {
  for (const auto& t : table_.tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const uint8_t* GgufFile::data(const GgufTensorInfo& t) const { return map_ + table_.data_offset + t.offset; }

void GgufFile::release_pages(const GgufTensorInfo& t) const {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = table_.data_offset + t.offset;
  const uint64_t bytes = static_cast<uint64_t>(elements(t) / ggml_block(t.type)->elements) * ggml_block(t.type)->bytes;
  // Only pages wholly inside the tensor: neighbours may not be converted yet.
  const uint64_t lo = (start + page - 1) / page * page, hi = (start + bytes) / page * page;
  if (hi > lo) ::madvise(const_cast<uint8_t*>(map_) + lo, hi - lo, MADV_DONTNEED);
}

std::vector<float> gguf_dequantize(const GgufFile& file, const GgufTensorInfo& t) {
  std::vector<float> out(static_cast<size_t>(GgufFile::elements(t)));
  ggml_dequantize(t.type, file.data(t), static_cast<int64_t>(out.size()), out.data());
  return out;
}

}  // namespace mlxb

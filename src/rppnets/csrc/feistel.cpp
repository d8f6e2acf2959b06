// P of a generated RPP layer on the CPU, one column at a time: the Feistel network over the whole
// domain 0..2^t-1 into a small table (a vectorised pass per round), then cycle walking through that
// table. The same bijection as rppnets.permutation.permuted_rows, bit for bit.
#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

// One round over the table p[0..size): even rounds high ^= F(low), odd rounds low ^= F(high), where
// F(v) = the top `width` of the 16 bits of v * mul + add. The loop is branch-free, so it vectorises;
// on x86 a clone for AVX2 (8 lanes with a 32-bit multiply) is picked at run time.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
static void feistel_round(int32_t* p, int32_t size, bool even, int a, int b, int32_t add, int32_t mul) {
  const int width = even ? a : b, to_bit = even ? b : 0, shift = to_bit - (16 - width);
  const int from = even ? 0 : b, left = std::max(shift, 0), right = std::max(-shift, 0);
  const int32_t half_mask = even ? (int32_t(1) << b) - 1 : (int32_t(1) << a) - 1;
  const int32_t keep = ((int32_t(1) << width) - 1) << (16 - width);
  for (int32_t y = 0; y < size; ++y) {
    const int32_t f = (((p[y] >> from) & half_mask) * mul + add) & keep;  // < 2^31: half < 2^15, mul, add < 2^16
    p[y] ^= (f << left) >> right;
  }
}

// Cycle walking from row i < m: the cycle through i comes back below m.
static inline int32_t walk(const int32_t* p, int64_t i, int32_t m) {
  int32_t y = p[i];
  while (y >= m) y = p[y];
  return y;
}

// Calls emit(c, table) for every column c of the keys (2, rounds, columns), in parallel over columns;
// table[i] for i < m, cycle-walked, is P_c(i) (or its inverse).
template <typename Emit>
static void for_each_column(const torch::Tensor& keys, int64_t m, bool inverse, const Emit& emit) {
  TORCH_CHECK(keys.device().is_cpu() && keys.scalar_type() == torch::kInt32 && keys.dim() == 3 &&
                  keys.size(0) == 2 && keys.is_contiguous(),
              "keys: expected a contiguous CPU int32 tensor (2, rounds, columns)");
  TORCH_CHECK(m >= 1 && m <= (int64_t(1) << 30), "m must be in 1..2^30, got ", m);
  const int64_t rounds = keys.size(1), columns = keys.size(2);
  const int t = m > 1 ? 64 - __builtin_clzll(uint64_t(m - 1)) : 1;  // bits of the domain
  const int a = (t + 1) / 2, b = t / 2;                               // high and low halves
  const int32_t size = int32_t(1) << t;
  const int32_t* k1 = keys.data_ptr<int32_t>();  // keys[0]: addends, (rounds, columns)
  const int32_t* k2 = k1 + rounds * columns;     // keys[1]: odd multipliers
  at::parallel_for(0, columns, 16, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> table(size);
    int32_t* p = table.data();
    for (int64_t c = begin; c < end; ++c) {
      for (int32_t y = 0; y < size; ++y) p[y] = y;
      for (int64_t step = 0; step < rounds; ++step) {
        const int64_t r = inverse ? rounds - 1 - step : step;  // each round is its own inverse
        feistel_round(p, size, r % 2 == 0, a, b, k1[r * columns + c], k2[r * columns + c]);
      }
      emit(c, p);
    }
  });
}

// (m, columns) int32: P_c(i), or with n >= 1 the flat gather index P_c(i) * n + c % n into an (m, n) weight.
torch::Tensor feistel_rows(const torch::Tensor& keys, int64_t m, bool inverse, int64_t n) {
  TORCH_CHECK(n >= 0 && m * std::max<int64_t>(n, 1) <= (int64_t(1) << 31), "the index does not fit in int32");
  const int64_t columns = keys.size(2);
  auto out = torch::empty({m, columns}, keys.options());
  int32_t* o = out.data_ptr<int32_t>();
  for_each_column(keys, m, inverse, [&](int64_t c, const int32_t* p) {
    const int32_t scale = n ? int32_t(n) : 1, offset = n ? int32_t(c % n) : 0;
    for (int64_t i = 0; i < m; ++i) o[i * columns + c] = walk(p, i, int32_t(m)) * scale + offset;
  });
  return out;
}

// W_p (m, columns) from the hidden weight W (m, n): W_p[i, c] = W[P_c(i), c % n], without an index in memory.
torch::Tensor permuted_weight(const torch::Tensor& keys, const torch::Tensor& weight) {
  TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 2, "weight: expected a CPU matrix (m, n)");
  const auto w_contiguous = weight.contiguous();
  const int64_t m = weight.size(0), n = weight.size(1), columns = keys.size(2);
  auto out = torch::empty({m, columns}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "permuted_weight", [&] {
    const scalar_t* w = w_contiguous.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for_each_column(keys, m, false, [&](int64_t c, const int32_t* p) {
      const scalar_t* column = w + c % n;
      for (int64_t i = 0; i < m; ++i) o[i * columns + c] = column[walk(p, i, int32_t(m)) * n];
    });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("feistel_rows", &feistel_rows, "P (or its flat gather index) of every column, on the CPU");
  module.def("permuted_weight", &permuted_weight, "W_p from W, generating P on the fly, on the CPU");
}

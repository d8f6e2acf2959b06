// The CPU kernels of RPP layers (loaded by rppnets.cpu_kernels).
// P of a generated layer, a group of columns at a time: the Feistel network over each column's whole domain
// 0..2^t-1 into a small table (all rounds in vector registers, 16-bit lanes up to t = 16), then cycle walking through
// that table, and the group's rows written row by row; the same bijection as rppnets.permutation.permuted_rows, bit
// for bit. For every mode, W_p gathered from W and
// dW folded from dW_p, reading P's rows as stored (uint8, int16 or int32); and the fused step, which
// makes W_p one block of columns at a time where its products use it. Each takes signed RPP's sign keys
// (one int32 per column) or None: then every entry of W_p, and every term of dW's fold, has its sign.
#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

// Signed RPP: the sign of the entry of W_p at row i of a column with sign key `key`, +1.0f or -1.0f; hashed as
// rppnets.layers.permutation.negative_signs, bit for bit (lowbias32's steps in uint32, then the top bit).
static inline float sign_of(uint32_t i, uint32_t key) {
  uint32_t x = i ^ key;
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  return 1.0f - 2.0f * float(x >> 31);
}

// The signs of row i in `count` columns (sign keys given). The loop has no
// branch and no gather, so it vectorises (an AVX2 clone on x86, as feistel_round): filled once per row or column
// and then multiplied in, they cost the fused step 0 to 5% (experiments/rpp_layer_benchmark), where a hash per entry
// inside the gathering loops, which do not vectorise, added a fifth, and a branch on the sign, mispredicted every
// other entry, three quarters.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
static void row_signs(const int32_t* sign_keys, int64_t i, int64_t count, float* out) {
  for (int64_t c = 0; c < count; ++c) out[c] = sign_of(uint32_t(i), uint32_t(sign_keys[c]));
}

// value times its sign where SIGNED (known at compile time: the unsigned loops are those without signs); a
// product with +-1 is exact.
template <bool SIGNED, typename T>
static inline T with_sign(T value, const float* signs, int64_t at) {
  if constexpr (SIGNED) return T(value * T(signs[at]));
  return value;
}

// The sign keys' data (columns,), or nullptr for unsigned RPP.
static const int32_t* sign_data(const std::optional<torch::Tensor>& signs, int64_t columns) {
  if (!signs.has_value()) return nullptr;
  TORCH_CHECK(signs->device().is_cpu() && signs->scalar_type() == torch::kInt32 && signs->dim() == 1 &&
                  signs->size(0) == columns && signs->is_contiguous(),
              "signs: expected contiguous CPU int32 sign keys, one per column (", columns, ")");
  return signs->data_ptr<int32_t>();
}

// Calls f with std::true_type where there are sign keys, else std::false_type: one instance of each loop per case.
template <typename F>
static void with_signs(const int32_t* sign_keys, const F& f) {
  if (sign_keys != nullptr) f(std::true_type{});
  else f(std::false_type{});
}

// One round over the table p[0..size): even rounds high ^= F(low), odd rounds low ^= F(high), where
// F(v) = the top `width` of the 16 bits of v * mul + add. The loop is branch-free, so it vectorises;
// on x86 a clone for AVX2 (8 lanes with a 32-bit multiply) is picked at run time. For domains over 16 bits.
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

// The same rounds for a domain of at most 16 bits (m <= 65536: every layer of the figure), in 16-bit lanes: 16 to an
// AVX2 vector, twice feistel_round's, written as GCC/Clang vector types since the compiler widens scalar 16-bit
// shifts to 32 bits (3.5 times slower than these here). Four vectors of the table at a time go through all the rounds
// in registers. F needs no more than 16 bits: it keeps bits of the low 16 of v * mul + add only, which 16-bit
// arithmetic gives exactly; and with t <= 16 the kept bits only move right, onto the other half.
typedef uint16_t Lanes16 __attribute__((vector_size(32)));
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
static void feistel_rounds16(uint16_t* p, int32_t size, int a, int b, int64_t steps, const uint8_t* even,
                             const uint16_t* adds, const uint16_t* muls) {
  const uint16_t low_mask = uint16_t((1u << b) - 1);
  const uint16_t keep_even = uint16_t(((1u << a) - 1) << (16 - a)), keep_odd = uint16_t(((1u << b) - 1) << (16 - b));
  const int right_even = 16 - a - b, right_odd = 16 - b;
  constexpr int32_t L = sizeof(Lanes16) / sizeof(uint16_t), U = 4;
  if (size < L) {  // t < 4: entry by entry
    for (int32_t y = 0; y < size; ++y) {
      uint32_t v = uint32_t(y);
      for (int64_t s = 0; s < steps; ++s)
        v ^= even[s] ? ((((v & low_mask) * muls[s] + adds[s]) & keep_even) >> right_even)
                     : ((((v >> b) * muls[s] + adds[s]) & keep_odd) >> right_odd);
      p[y] = uint16_t(v);
    }
    return;
  }
  Lanes16 iota;
  for (int32_t l = 0; l < L; ++l) iota[l] = uint16_t(l);
  for (int32_t base = 0; base < size; base += U * L) {
    Lanes16 v[U];
    for (int32_t u = 0; u < U; ++u) v[u] = iota + uint16_t(base + u * L);
    for (int64_t s = 0; s < steps; ++s) {
      const uint16_t mul = muls[s], add = adds[s];
      if (even[s])
        for (int32_t u = 0; u < U; ++u) v[u] ^= (((v[u] & low_mask) * mul + add) & keep_even) >> right_even;
      else
        for (int32_t u = 0; u < U; ++u) v[u] ^= (((v[u] >> b) * mul + add) & keep_odd) >> right_odd;
    }
    for (int32_t u = 0; u < U && base + u * L < size; ++u) std::memcpy(p + base + u * L, &v[u], sizeof(Lanes16));
  }
}

// Cycle walking from row i < m: the cycle through i comes back below m.
template <typename T>
static inline int32_t walk(const T* p, int64_t i, int32_t m) {
  int32_t y = p[i];
  while (y >= m) y = p[y];
  return y;
}

// The Feistel table of one column over the whole domain (its `size` = 2^t entries), rounds in the order given by
// `inverse` (each round is its own inverse, so the inverse runs them backwards): table[y] for y < m, cycle-walked,
// is P_c(y), or its inverse.
static void column_table(const int32_t* k1, const int32_t* k2, int64_t rounds, int64_t columns, int64_t c, int t,
                         bool inverse, uint16_t* table) {
  uint16_t adds[64], muls[64];
  uint8_t even[64];
  for (int64_t step = 0; step < rounds; ++step) {
    const int64_t r = inverse ? rounds - 1 - step : step;
    even[step] = r % 2 == 0, adds[step] = uint16_t(k1[r * columns + c]), muls[step] = uint16_t(k2[r * columns + c]);
  }
  feistel_rounds16(table, int32_t(1) << t, (t + 1) / 2, t / 2, rounds, even, adds, muls);
}

static void column_table(const int32_t* k1, const int32_t* k2, int64_t rounds, int64_t columns, int64_t c, int t,
                         bool inverse, int32_t* table) {
  for (int32_t y = 0; y < (int32_t(1) << t); ++y) table[y] = y;
  for (int64_t step = 0; step < rounds; ++step) {
    const int64_t r = inverse ? rounds - 1 - step : step;
    feistel_round(table, int32_t(1) << t, r % 2 == 0, (t + 1) / 2, t / 2, k1[r * columns + c], k2[r * columns + c]);
  }
}

// Generated P's rows of the columns [c0, c1) of the keys (2, rounds, columns), or of its inverse:
// rows[i * stride + c - c0] = P_c(i) for i < m. A group of columns at a time, in parallel over groups (serially
// where called inside a parallel region): each column's table (uint16 where the domain fits 16 bits, at most 64
// columns and 256 KB of tables), its entries below m cycle-walked in place (a walk from i reads table[i] and entries
// at m and above only, so the order is free), then the group's rows written row by row, contiguously.
static void generated_rows(const torch::Tensor& keys, int64_t m, bool inverse, int64_t c0, int64_t c1, int32_t* rows,
                           int64_t stride) {
  TORCH_CHECK(keys.device().is_cpu() && keys.scalar_type() == torch::kInt32 && keys.dim() == 3 &&
                  keys.size(0) == 2 && keys.is_contiguous(),
              "keys: expected a contiguous CPU int32 tensor (2, rounds, columns)");
  TORCH_CHECK(m >= 1 && m <= (int64_t(1) << 30), "m must be in 1..2^30, got ", m);
  TORCH_CHECK(keys.size(1) <= 64, "keys: at most 64 rounds, got ", keys.size(1));
  const int64_t rounds = keys.size(1), columns = keys.size(2);
  const int t = m > 1 ? 64 - __builtin_clzll(uint64_t(m - 1)) : 1;  // bits of the domain
  const int64_t size = int64_t(1) << t;
  const int32_t* k1 = keys.data_ptr<int32_t>();  // keys[0]: addends, (rounds, columns)
  const int32_t* k2 = k1 + rounds * columns;     // keys[1]: odd multipliers
  auto run = [&](auto zero) {
    using T = decltype(zero);
    // the tables a cache line apart beyond their power-of-two size: at a stride of 2^t bytes, the same few sets of
    // L1 would hold every table's entry i, which the rows below read together (4 times slower at m = 1,000)
    const int64_t pitch = size + 64 / int64_t(sizeof(T));
    const int64_t group = std::clamp<int64_t>((int64_t(1) << 18) / int64_t(sizeof(T) * pitch), 1, 64);
    at::parallel_for(c0, c1, group, [&](int64_t first, int64_t last) {
      std::vector<T> tables(std::min(group, last - first) * pitch);
      for (int64_t g0 = first; g0 < last; g0 += group) {
        const int64_t count = std::min(group, last - g0);
        for (int64_t g = 0; g < count; ++g) {
          T* table = tables.data() + g * pitch;
          column_table(k1, k2, rounds, columns, g0 + g, t, inverse, table);
          for (int64_t i = 0; i < m; ++i)
            if (table[i] >= m) table[i] = T(walk(table, i, int32_t(m)));
        }
        for (int64_t i = 0; i < m; ++i) {
          int32_t* out = rows + i * stride + g0 - c0;
          for (int64_t g = 0; g < count; ++g) out[g] = tables[g * pitch + i];
        }
      }
    });
  };
  if (t <= 16) run(uint16_t(0));
  else run(int32_t(0));
}

// block[i * block_stride + c] = s W[index[i * stride + c], (c0 + c) % n] for i < m, c < width: W_p's columns
// [c0, c0 + width) gathered from W (m, n) through their rows of P, in parallel over rows (serially inside a run).
template <bool SIGNED, typename scalar_t, typename index_t>
static void gather_block(const index_t* index, int64_t stride, const scalar_t* w, int64_t m, int64_t n, int64_t c0,
                         int64_t width, const int32_t* sign_keys, scalar_t* block, int64_t block_stride) {
  at::parallel_for(0, m, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> signs(SIGNED ? width : 0);
    for (int64_t i = begin; i < end; ++i) {
      if constexpr (SIGNED) row_signs(sign_keys + c0, i, width, signs.data());
      const index_t* from = index + i * stride;
      scalar_t* to = block + i * block_stride;
      for (int64_t c = 0, j = c0 % n; c < width; ++c, j = j + 1 == n ? 0 : j + 1)
        to[c] = with_sign<SIGNED>(w[int64_t(from[c]) * n + j], signs.data(), c);
    }
  });
}

// P (m, columns) as int32: out[i, c] = P_c(i), or its inverse.
torch::Tensor feistel_rows(const torch::Tensor& keys, int64_t m, bool inverse) {
  const int64_t columns = keys.size(2);
  auto out = torch::empty({m, columns}, keys.options());
  generated_rows(keys, m, inverse, 0, columns, out.data_ptr<int32_t>(), columns);
  return out;
}

// Columns of W_p made at a time where P is generated: its rows for them in a scratch of m * GENERATED_BLOCK int32.
constexpr int64_t GENERATED_BLOCK = 64;

// W_p (m, columns) from the hidden weight W (m, n): W_p[i, c] = s W[P_c(i), c % n], without an index in memory.
torch::Tensor permuted_weight(const torch::Tensor& keys, const torch::Tensor& weight,
                              const std::optional<torch::Tensor>& signs) {
  TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 2, "weight: expected a CPU matrix (m, n)");
  const auto w_contiguous = weight.contiguous();
  const int64_t m = weight.size(0), n = weight.size(1), columns = keys.size(2);
  const int32_t* sign_keys = sign_data(signs, columns);
  auto out = torch::empty({m, columns}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "permuted_weight", [&] {
    const scalar_t* w = w_contiguous.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    with_signs(sign_keys, [&](auto is_signed) {
      constexpr bool SIGNED = decltype(is_signed)::value;
      const int64_t blocks = (columns + GENERATED_BLOCK - 1) / GENERATED_BLOCK;
      at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
        std::vector<int32_t> rows(m * std::min(GENERATED_BLOCK, columns));
        for (int64_t block = first; block < last; ++block) {
          const int64_t c0 = block * GENERATED_BLOCK, width = std::min(GENERATED_BLOCK, columns - c0);
          generated_rows(keys, m, false, c0, c0 + width, rows.data(), width);
          gather_block<SIGNED>(rows.data(), width, w, m, n, c0, width, sign_keys, o + c0, columns);
        }
      });
    });
  });
  return out;
}

// Calls f with the index's data as a pointer to its integer type (stored indices are uint8, int16 or int32).
template <typename F>
static void with_index(const torch::Tensor& index, const F& f) {
  switch (index.scalar_type()) {
    case torch::kByte: f(index.data_ptr<uint8_t>()); break;
    case torch::kShort: f(index.data_ptr<int16_t>()); break;
    case torch::kInt: f(index.data_ptr<int32_t>()); break;
    default: TORCH_CHECK(false, "index: expected uint8, int16 or int32, got ", index.scalar_type());
  }
}

static void check_rows(const torch::Tensor& rows, const torch::Tensor& values, int64_t n) {
  TORCH_CHECK(rows.device().is_cpu() && rows.dim() == 2 && rows.is_contiguous(), "rows: expected a contiguous CPU matrix");
  TORCH_CHECK(n >= 1 && rows.size(1) % n == 0, "rows: the column count must be a multiple of n");
  TORCH_CHECK(values.device().is_cpu() && values.dim() == 2 && values.size(0) == rows.size(0), "values: expected (m, *) on the CPU");
}

// W_p (m, k*n) from the hidden weight W (m, n) and P's rows (m, k*n): W_p[i, h*n + j] = s W[P[i, h*n + j], j].
torch::Tensor gather_weight(const torch::Tensor& rows, const torch::Tensor& weight,
                            const std::optional<torch::Tensor>& signs) {
  const int64_t m = rows.size(0), columns = rows.size(1), n = weight.size(1), k = columns / n;
  check_rows(rows, weight, n);
  const int32_t* sign_keys = sign_data(signs, columns);
  const auto w_contiguous = weight.contiguous();
  auto out = torch::empty({m, columns}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "gather_weight", [&] {
    const scalar_t* w = w_contiguous.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    with_index(rows, [&](const auto* p) {
      with_signs(sign_keys, [&](auto is_signed) {
        constexpr bool SIGNED = decltype(is_signed)::value;
        at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
          std::vector<float> signs(SIGNED ? columns : 0);
          for (int64_t i = begin; i < end; ++i) {
            if constexpr (SIGNED) row_signs(sign_keys, i, columns, signs.data());
            for (int64_t h = 0, e = i * columns; h < k; ++h)
              for (int64_t j = 0; j < n; ++j, ++e)
                o[e] = with_sign<SIGNED>(w[int64_t(p[e]) * n + j], signs.data(), h * n + j);
          }
        });
      });
    });
  });
  return out;
}

// dW (m, n) from dW_p (m, k*n) and P's rows: dW[P[i, h*n + j], j] += s dW_p[i, h*n + j], in float32 (float64 for
// double). Each entry's terms are added in the order of (i, h), as torch.bincount over the flat index adds them,
// so the sums are the same bit for bit.
torch::Tensor fold_weight_grad(const torch::Tensor& rows, const torch::Tensor& grad, int64_t n,
                               const std::optional<torch::Tensor>& signs) {
  const int64_t m = rows.size(0), columns = rows.size(1), k = columns / n;
  check_rows(rows, grad, n);
  TORCH_CHECK(grad.size(1) == columns, "grad: expected the shape of rows");
  const int32_t* sign_keys = sign_data(signs, columns);
  const auto g_contiguous = grad.contiguous();
  const auto accumulate = grad.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto out = torch::zeros({m, n}, grad.options().dtype(accumulate));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "fold_weight_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;  // float for float, bfloat16 and half; double for double
    const scalar_t* g = g_contiguous.data_ptr<scalar_t>();
    acc_t* o = out.data_ptr<acc_t>();
    with_index(rows, [&](const auto* p) {
      with_signs(sign_keys, [&](auto is_signed) {
        constexpr bool SIGNED = decltype(is_signed)::value;
        std::vector<float> signs(SIGNED ? columns : 0);
        for (int64_t e = 0, i = 0; i < m; ++i) {  // serial, like bincount: the adds of one entry may not be reordered
          if constexpr (SIGNED) row_signs(sign_keys, i, columns, signs.data());
          for (int64_t h = 0; h < k; ++h)
            for (int64_t j = 0; j < n; ++j, ++e)
              o[int64_t(p[e]) * n + j] += with_sign<SIGNED>(acc_t(g[e]), signs.data(), h * n + j);
        }
      });
    });
  });
  return out;
}

// The fused step: x @ W_p, dy @ W_p^T and dW computed one block of W_p's columns at a time. Each block (m, width)
// is made from W and P (read from the stored rows, or generated) where it is used, then overwritten by the next:
// the whole W_p (m, k*n) never exists. The products are ATen's own matrix multiplications on the blocks.

// P as the kernels get it: the stored rows (m, columns) of uint8, int16 or int32, or the round keys (generated);
// and the sign keys (columns,) of signed RPP, or nullptr.
struct Permutation {
  const torch::Tensor& p;
  bool generated;
  const int32_t* signs = nullptr;
  int64_t columns() const { return generated ? p.size(2) : p.size(1); }
};

// block (m, c1 - c0) = W_p[:, c0:c1], where not null, with its entries' signs; for generated P, rows (m, c1 - c0)
// are made P's rows there first (stored rows are read where they are).
template <bool SIGNED, typename scalar_t>
static void make_block(const Permutation& perm, const scalar_t* w, int64_t m, int64_t n, int64_t c0, int64_t c1,
                       scalar_t* block, int32_t* rows) {
  const int64_t width = c1 - c0;
  if (perm.generated) {
    generated_rows(perm.p, m, false, c0, c1, rows, width);
    if (block != nullptr) gather_block<SIGNED>(rows, width, w, m, n, c0, width, perm.signs, block, width);
    return;
  }
  if (block == nullptr) return;
  with_index(perm.p, [&](const auto* index) {
    gather_block<SIGNED>(index + c0, perm.p.size(1), w, m, n, c0, width, perm.signs, block, width);
  });
}

// dw[rows[i, c], (l0 + c) % n] += s g[i, c] for a block g (m, width) of dW_p whose first column is column c0 of W_p;
// rows has row stride `stride`, dw (m, *) row stride `dw_stride`: a run's own columns of dW, l0 where this block
// starts among them. Each entry of dw gets one term per column that holds it, added in the order of the rows i.
template <bool SIGNED, typename scalar_t, typename index_t, typename acc_t>
static void fold_block(const scalar_t* g, const index_t* rows, int64_t stride, int64_t m, int64_t n, int64_t c0,
                       int64_t width, acc_t* dw, int64_t dw_stride, int64_t l0, const int32_t* sign_keys) {
  std::vector<float> signs(SIGNED ? width : 0);
  for (int64_t i = 0; i < m; ++i) {
    if constexpr (SIGNED) row_signs(sign_keys + c0, i, width, signs.data());
    for (int64_t c = 0, l = l0; c < width; ++c, l = l + 1 == n ? 0 : l + 1)
      dw[int64_t(rows[i * stride + c]) * dw_stride + l] += with_sign<SIGNED>(acc_t(g[i * width + c]), signs.data(), c);
  }
}

static void check_permutation(const Permutation& perm, int64_t m, int64_t n) {
  TORCH_CHECK(perm.p.is_contiguous() && perm.p.device().is_cpu(), "P: expected a contiguous CPU tensor");
  TORCH_CHECK(n >= 1 && perm.columns() % n == 0, "P: the column count must be a multiple of n");
  if (!perm.generated) TORCH_CHECK(perm.p.dim() == 2 && perm.p.size(0) == m, "rows: expected (m, k*n)");
}

// Splits the `blocks` blocks of columns into `runs` contiguous runs and calls body(run, first, end) for each, in
// parallel: one parallel region per op, not one per block, which on a busy machine costs a wait for every thread
// each time. Inside, ATen's products and the kernels' own loops run on the calling thread.
template <typename Body>
static void for_each_run(int64_t runs, int64_t blocks, const Body& body) {
  // the caller's thread-local state on the worker threads too, which OpenMP threads do not inherit: its dispatch
  // keys (below autograd, autocast off: autograd refuses an out= product of tensors that require grad) and the
  // profiler's, which then sees their allocations. Copying it may take the GIL (Python saved-tensor hooks), so the
  // bindings below release the GIL for the kernel's duration
  const at::ThreadLocalState state;
  at::parallel_for(0, runs, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard guard(state);
    for (int64_t run = begin; run < end; ++run) body(run, run * blocks / runs, (run + 1) * blocks / runs);
  });
}

// The forward's runs: one per thread (each block of y is its own product, so how they are split changes no bit).
static int64_t thread_runs(int64_t blocks) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
}

// y = x @ W_p (batch, k*n), for x (batch, m) and W (m, n) of one dtype; `block` columns of W_p at a time.
torch::Tensor fused_matmul(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& p,
                           bool generated, int64_t block, const std::optional<torch::Tensor>& signs) {
  Permutation perm{p, generated};
  const int64_t m = weight.size(0), n = weight.size(1), columns = perm.columns();
  check_permutation(perm, m, n);
  perm.signs = sign_data(signs, columns);
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.size(1) == m && x.scalar_type() == weight.scalar_type(),
              "x: expected a CPU matrix (batch, m) of W's dtype");
  TORCH_CHECK(block >= 1, "block: expected at least one column");
  const auto w_contiguous = weight.contiguous();
  auto y = torch::empty({x.size(0), columns}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "fused_matmul", [&] {
    with_signs(perm.signs, [&](auto is_signed) {
      constexpr bool SIGNED = decltype(is_signed)::value;
      const int64_t blocks = (columns + block - 1) / block, runs = thread_runs(blocks);
      // each run's tile, made here on the calling thread: the memory a step takes then depends on the thread count
      // alone, never on how the threads were scheduled (made inside the runs, two tiles were alive at once or not)
      // (and, generated, its rows of P)
      std::vector<torch::Tensor> buffers, rows;
      for (int64_t run = 0; run < runs; ++run) {
        buffers.push_back(torch::empty({m * std::min(block, columns)}, weight.options()));
        rows.push_back(torch::empty({generated ? m * std::min(block, columns) : 0}, weight.options().dtype(torch::kInt32)));
      }
      for_each_run(runs, blocks, [&](int64_t run, int64_t first, int64_t end) {
        auto& buffer = buffers[run];
        int32_t* block_rows = generated ? rows[run].data_ptr<int32_t>() : nullptr;
        for (int64_t c0 = first * block; c0 < std::min(end * block, columns); c0 += block) {
          const int64_t width = std::min(block, columns - c0);
          auto tile = buffer.narrow(0, 0, m * width).view({m, width});
          make_block<SIGNED>(perm, w_contiguous.data_ptr<scalar_t>(), m, n, c0, c0 + width, tile.data_ptr<scalar_t>(),
                             block_rows);
          auto out = y.narrow(1, c0, width);  // a strided view: the product is written in place
          at::mm_out(out, x, tile);
        }
      });
    });
  });
  return y;
}

// The backward of y = x @ W_p for dy (batch, k*n): dx = dy @ W_p^T (batch, m) where W is given, in dy's dtype, and
// dW (m, n) where x is given, summed in float32 (float64 for double). What is not computed comes back empty.
// Each block of W_p (and, generated, of P) is made once for both. Both are sums over W_p's columns, split into
// min(blocks, runs) runs of blocks that depend on the sizes alone, never on the thread count: each run sums its
// blocks, in order, into its own dx and into its own columns of dW (those of W its columns hold), and the runs'
// sums are added in run order, element by element. So the bits are the same on any number of threads.
std::tuple<torch::Tensor, torch::Tensor> fused_backward(const torch::Tensor& grad_y,
                                                        const std::optional<torch::Tensor>& x,
                                                        const std::optional<torch::Tensor>& weight,
                                                        const torch::Tensor& p, bool generated, int64_t m, int64_t n,
                                                        int64_t block, int64_t runs,
                                                        const std::optional<torch::Tensor>& signs) {
  Permutation perm{p, generated};
  check_permutation(perm, m, n);
  TORCH_CHECK(block >= 1 && runs >= 1, "block, runs: expected at least one");
  const int64_t columns = perm.columns(), batch = grad_y.size(0), blocks = (columns + block - 1) / block;
  runs = std::min(runs, blocks);
  perm.signs = sign_data(signs, columns);
  const bool need_x = weight.has_value(), need_weight = x.has_value();
  const auto dtype = grad_y.scalar_type();
  TORCH_CHECK(grad_y.device().is_cpu() && grad_y.dim() == 2 && grad_y.size(1) == columns,
              "grad_y: expected (batch, k*n)");
  if (need_x)
    TORCH_CHECK(weight->sizes() == torch::IntArrayRef({m, n}) && weight->scalar_type() == dtype,
                "weight: expected (m, n) of grad_y's dtype");
  if (need_weight)
    TORCH_CHECK(x->sizes() == torch::IntArrayRef({batch, m}) && x->scalar_type() == dtype,
                "x: expected (batch, m) of grad_y's dtype");
  const auto options = grad_y.options();
  const auto accumulate = dtype == torch::kDouble ? torch::kDouble : torch::kFloat;
  // run r holds W_p's columns [start[r], start[r + 1]): its dW is (m, width), column l being W's (start + l) % n, where
  // width = min(n, its column count); its dx sums its blocks' products in float32 at least (in bf16 every block would
  // lose bits), and is written by its first block (no zeros to write first)
  std::vector<int64_t> start;
  std::vector<torch::Tensor> grad_x, grad_w;
  for (int64_t run = 0; run <= runs; ++run) start.push_back(std::min(run * blocks / runs * block, columns));
  for (int64_t run = 0; run < runs; ++run) {
    const int64_t width = std::min(n, start[run + 1] - start[run]);
    grad_x.push_back(torch::empty({need_x ? batch : 0, m}, options.dtype(accumulate)));
    grad_w.push_back(torch::zeros({need_weight ? m : 0, width}, options.dtype(accumulate)));
  }
  const auto w_contiguous = need_x ? weight->contiguous() : torch::Tensor();
  const auto x_t = need_weight ? x->t() : torch::Tensor();
  auto dw_out = torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_y.scalar_type(), "fused_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = need_x ? w_contiguous.data_ptr<scalar_t>() : nullptr;
    with_signs(perm.signs, [&](auto is_signed) {
      constexpr bool SIGNED = decltype(is_signed)::value;
      // scratch for each thread that runs runs (at most min(runs, threads) at once), made here on the calling
      // thread, as the forward's tiles: a step's memory depends on the thread count, not on the threads' schedule
      const int64_t max_width = std::min(block, columns), slots = std::min<int64_t>(runs, at::get_num_threads());
      std::vector<std::array<torch::Tensor, 3>> scratch;
      for (int64_t slot = 0; slot < slots; ++slot)
        scratch.push_back({torch::empty({need_x ? m * max_width : 0}, options),
                           torch::empty({need_weight ? m * max_width : 0}, options),
                           torch::empty({generated ? m * max_width : 0}, options.dtype(torch::kInt32))});
      for_each_run(runs, blocks, [&](int64_t run, int64_t first, int64_t end) {
        const int64_t slot = at::get_thread_num();  // one thread per slot: no two runs at once share scratch
        TORCH_INTERNAL_ASSERT(slot < slots, "fused_backward: thread ", slot, " of ", slots, " scratch slots");
        auto& [tiles, products, rows] = scratch[slot];
        auto dx = grad_x[run];
        acc_t* dw = need_weight ? grad_w[run].data_ptr<acc_t>() : nullptr;
        const int64_t dw_stride = grad_w[run].size(1);
        for (int64_t c0 = first * block; c0 < std::min(end * block, columns); c0 += block) {
          const int64_t width = std::min(block, columns - c0);
          auto tile = tiles.narrow(0, 0, need_x ? m * width : 0).view({need_x ? m : 0, width});
          int32_t* block_rows = rows.numel() ? rows.data_ptr<int32_t>() : nullptr;
          make_block<SIGNED>(perm, w, m, n, c0, c0 + width, need_x ? tile.data_ptr<scalar_t>() : nullptr, block_rows);
          const auto dy = grad_y.narrow(1, c0, width);
          if (need_x) {
            const bool first_block = c0 == first * block;
            if (accumulate != grad_y.scalar_type()) first_block ? dx.copy_(at::mm(dy, tile.t())) : dx.add_(at::mm(dy, tile.t()));
            else if (first_block) at::mm_out(dx, dy, tile.t());
            else dx.addmm_(dy, tile.t());
          }
          if (need_weight) {
            auto product = products.narrow(0, 0, m * width).view({m, width});
            at::mm_out(product, x_t, dy);  // dW_p[:, c0:c0 + width]
            const scalar_t* g = product.data_ptr<scalar_t>();
            const int64_t l0 = (c0 - start[run]) % n;
            if (generated) fold_block<SIGNED>(g, block_rows, width, m, n, c0, width, dw, dw_stride, l0, perm.signs);
            else with_index(p, [&](const auto* index) {
              fold_block<SIGNED>(g, index + c0, columns, m, n, c0, width, dw, dw_stride, l0, perm.signs);
            });
          }
        }
      });
    });
    // the runs' sums added in run order; in parallel over the entries, each of which is summed by one thread
    if (need_x && runs > 1) {
      acc_t* out = grad_x[0].data_ptr<acc_t>();
      at::parallel_for(0, batch * m, 8192, [&](int64_t begin, int64_t end) {
        for (int64_t run = 1; run < runs; ++run) {
          const acc_t* part = grad_x[run].data_ptr<acc_t>();
          for (int64_t e = begin; e < end; ++e) out[e] += part[e];
        }
      });
    }
    if (need_weight && runs == 1) dw_out = grad_w[0];  // its own columns are all of dW's
    else if (need_weight) {
      dw_out = torch::zeros({m, n}, options.dtype(accumulate));
      acc_t* out = dw_out.data_ptr<acc_t>();
      at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
        for (int64_t run = 0; run < runs; ++run) {
          const int64_t width = grad_w[run].size(1), j0 = start[run] % n;
          const acc_t* part = grad_w[run].data_ptr<acc_t>();
          for (int64_t i = begin; i < end; ++i)
            for (int64_t l = 0, j = j0; l < width; ++l, j = j + 1 == n ? 0 : j + 1) out[i * n + j] += part[i * width + l];
        }
      });
    }
  });
  if (!need_weight) dw_out = torch::zeros({0, n}, options.dtype(accumulate));
  return {grad_x[0].to(grad_y.scalar_type()), dw_out};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  // the kernels touch no Python object: they run without the GIL, as torch's own ops do
  const auto nogil = pybind11::call_guard<pybind11::gil_scoped_release>();
  module.def("feistel_rows", &feistel_rows, "P (or its inverse) of every column, on the CPU", nogil);
  // signs, last, defaults to None (unsigned RPP)
  using pybind11::arg;
  const auto unsigned_ = pybind11::none();
  module.def("permuted_weight", &permuted_weight, "W_p from W, generating P on the fly, on the CPU", arg("keys"),
             arg("weight"), arg("signs") = unsigned_, nogil);
  module.def("gather_weight", &gather_weight, "W_p from W and P's rows, on the CPU", arg("rows"), arg("weight"),
             arg("signs") = unsigned_, nogil);
  module.def("fold_weight_grad", &fold_weight_grad, "dW from dW_p and P's rows, deterministically, on the CPU",
             arg("rows"), arg("grad"), arg("n"), arg("signs") = unsigned_, nogil);
  module.def("fused_matmul", &fused_matmul, "x @ W_p, one block of W_p's columns at a time, on the CPU", arg("x"),
             arg("weight"), arg("p"), arg("generated"), arg("block"), arg("signs") = unsigned_, nogil);
  module.def("fused_backward", &fused_backward, "dy @ W_p^T and dW, one block of W_p's columns at a time",
             arg("grad_y"), arg("x"), arg("weight"), arg("p"), arg("generated"), arg("m"), arg("n"), arg("block"),
             arg("runs"), arg("signs") = unsigned_, nogil);
}

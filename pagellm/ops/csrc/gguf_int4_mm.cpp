// x @ W.T for W in the layout of torch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`,
// AVX-512 build), every row computed with exactly that kernel's arithmetic, but up to
// MAX_ROWS rows per pass over the weight where torch's does 4 (benchmarks/RESULTS.md,
// session 7). Built and loaded by pagellm/ops/gguf_cpu.py; OpenMP is torch's own runtime
// (same libgomp.so.1), so the thread team and thread count are torch's.
//
// Layout (torch's `weight_to_int4pack_kernel`, BLOCK_N = 64, N % 64 == 0 here): packed
// uint8 [N / 64, K, 32]; byte d of row k of block b holds column 64 b + d in its low nibble
// and 64 b + d + 32 in its high nibble (d < 16), bytes 16..31 the same for columns + 16.
// scales_and_zeros: bfloat16 [K / G, N, 2]. Per output element, like torch:
//   w = fma(q - 8, scale, zero)          (float32, one rounding)
//   c = fma(float(x[m, k]), w, c)        for k = 0 .. K-1 in order, c starting at +0
//   out = bfloat16(c), round to nearest even (NaN -> 0xffff), or that value as float32.
// Hence a row's result does not depend on the other rows, nor on how rows are grouped.

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

namespace {

constexpr int MAX_ROWS = 8;     // accumulators: 2 x rows zmm registers, plus 7 for the weight

inline void load_scale_zero(const uint16_t* pairs, __m512& scale, __m512& zero) {
  // 16 (scale, zero) bfloat16 pairs -> 16 scales, 16 zeros (float32, exact)
  __m512i lo = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)pairs)), 16);
  __m512i hi = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(pairs + 16))), 16);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  scale = _mm512_permutex2var_ps(_mm512_castsi512_ps(lo), even, _mm512_castsi512_ps(hi));
  zero = _mm512_permutex2var_ps(_mm512_castsi512_ps(lo), odd, _mm512_castsi512_ps(hi));
}

inline __m256i to_bf16(__m512 value) {
  // torch's vec::cvtfp32_bf16 (AVX-512): round to nearest even, NaN -> 0xffff
  __m512i bits = _mm512_castps_si512(value);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)), bits), 16);
  __mmask16 ordered = _mm512_cmp_ps_mask(value, value, _CMP_ORD_Q);
  rounded = _mm512_mask_blend_epi32(ordered, _mm512_set1_epi32(0xffff), rounded);
  return _mm512_cvtusepi32_epi16(rounded);
}

inline void store(__m512 value, void* out, int64_t index, bool out_f32) {
  __m256i bf16 = to_bf16(value);
  if (out_f32) {
    __m512i widened = _mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16);
    _mm512_storeu_si512((__m512i*)((float*)out + index), widened);
  } else {
    _mm256_storeu_si256((__m256i*)((uint16_t*)out + index), bf16);
  }
}

// ROWS rows of x (float32, [ROWS, K]) times one half of a 64-column block: columns
// 16 half .. +15 (low nibbles of bytes 16 half .. +15) and 32 + 16 half .. +15 (high nibbles).
template <int ROWS>
void half_block(const float* x, int64_t K, const uint8_t* block, const uint16_t* pairs,
                int64_t N, int64_t group, int half, void* out, int64_t col0, bool out_f32) {
  const __m512 lut = _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7, -8);
  __m512 acc[ROWS][2];
  for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  __m512 scale_lo, zero_lo, scale_hi, zero_hi;
  for (int64_t k0 = 0; k0 < K; k0 += group) {
    const uint16_t* row = pairs + (k0 / group) * N * 2;
    load_scale_zero(row + 32 * half, scale_lo, zero_lo);
    load_scale_zero(row + 32 * (half + 2), scale_hi, zero_hi);
    for (int64_t k = k0; k < k0 + group; ++k) {
      __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(block + k * 32 + 16 * half)));
      __m512 w_lo = _mm512_fmadd_ps(_mm512_permutexvar_ps(codes, lut), scale_lo, zero_lo);
      __m512 w_hi = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), lut),
                                    scale_hi, zero_hi);
      for (int r = 0; r < ROWS; ++r) {
        __m512 a = _mm512_set1_ps(x[r * K + k]);
        acc[r][0] = _mm512_fmadd_ps(a, w_lo, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(a, w_hi, acc[r][1]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    store(acc[r][0], out, r * N + col0 + 16 * half, out_f32);
    store(acc[r][1], out, r * N + col0 + 32 + 16 * half, out_f32);
  }
}

void rows_half_block(const float* x, int64_t rows, int64_t K, const uint8_t* block,
                     const uint16_t* pairs, int64_t N, int64_t group, int half, void* out,
                     int64_t col0, bool out_f32) {
  switch (rows) {
#define CASE(R) case R: half_block<R>(x, K, block, pairs, N, group, half, out, col0, out_f32); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
  }
}

}  // namespace

extern "C" {

// x: bfloat16 [M, K]; packed: uint8 [N / 64, K, 32]; pairs: bfloat16 [K / group, N, 2];
// out: [M, N] bfloat16, or float32 when out_f32. N % 64 == 0, K % group == 0, group % 1.
// Rows go in passes of at most MAX_ROWS, as even as possible; threads split the N / 32
// half blocks (each thread does every row of its columns).
void gguf_int4_mm(const uint16_t* x_bf16, int64_t M, int64_t K, const uint8_t* packed,
                  int64_t N, const uint16_t* pairs, int64_t group, void* out, int out_f32) {
  float* x = (float*)malloc(sizeof(float) * M * K);
  for (int64_t i = 0; i < M * K; ++i) {
    uint32_t bits = (uint32_t)x_bf16[i] << 16;
    memcpy(x + i, &bits, 4);
  }
  const int64_t passes = (M + MAX_ROWS - 1) / MAX_ROWS;
  const int64_t tasks = N / 32;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t nb = task / 2;
    const int half = (int)(task % 2);
    int64_t row = 0;
    for (int64_t pass = 0; pass < passes; ++pass) {
      const int64_t rows = (M - row) / (passes - pass);   // even split, remainder last
      char* out_rows = (char*)out + row * N * (out_f32 ? 4 : 2);
      rows_half_block(x + row * K, rows, K, packed + nb * K * 32, pairs + nb * 64 * 2, N,
                      group, half, out_rows, nb * 64, out_f32 != 0);
      row += rows;
    }
  }
  free(x);
}

}  // extern "C"


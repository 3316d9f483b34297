/* Exact int8 matrix products for CPUs where torch's own int8 kernel is slow.
 *
 * y[m][n] = sum_k x[m][k] * w[n][k], accumulated in int32: the same exact integer
 * sums as torch._int_mm(x, w.t()), so either may compute any product (engine/native.py).
 * AVX2: maddubs multiplies |x| (unsigned) by w carrying x's sign; a pair of such products
 * is at most 2 * 127 * 127 = 32258, so the int16 sums never saturate (int8 values are
 * in [-127, 127], as quantize_rows makes them).
 * Threads: OpenMP over blocks of output rows, in torch's own libgomp (the same soname).
 */
#include <stdint.h>
#include <stdlib.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>

#define ROWS 16        /* activation rows per pass over a weight block */
#define BLOCK 32       /* weight rows per block (BLOCK * K bytes stay in L2) */

int ks_kernel_version(void) { return 2; }   /* of int8_kernel.c and step_ops.c together */

__attribute__((target("avx2")))
static inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* The output of a tile: the int32 sums, or decode rows scaled back to float32. */
typedef struct {
    int32_t *sums;                               /* (M, N), or NULL */
    float *out;                                  /* (M, N) when sums is NULL */
    const float *step, *scale, *bias;            /* per row of x, per row of w, per row of w or NULL */
} Out;

/* Rows m0..m1 (at most ROWS) of x against weight rows n0..n1. */
__attribute__((target("avx2")))
static void tile(const int8_t *x, int64_t m0, int64_t m1, int64_t K,
                 const int8_t *w, int64_t n0, int64_t n1, int64_t N, const Out *o) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t K32 = K & ~(int64_t)31;
    const int64_t M = m1 - m0;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *wr = w + n * K;
        __m256i acc[ROWS];
        for (int64_t m = 0; m < M; m++) acc[m] = _mm256_setzero_si256();
        for (int64_t k = 0; k < K32; k += 32) {
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + k));
            for (int64_t m = 0; m < M; m++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + (m0 + m) * K + k));
                const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(wv, xv));
                acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(p, ones));
            }
        }
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = x + (m0 + m) * K;
            int32_t d = hsum(acc[m]);
            for (int64_t k = K32; k < K; k++) d += (int32_t)xr[k] * (int32_t)wr[k];
            if (o->sums) {
                o->sums[(m0 + m) * N + n] = d;
            } else {   /* torch's order: (float)sum * (scale * step), then + bias; no fused multiply-add */
                const float t = o->scale[n] * o->step[m0 + m];
                float v = (float)d * t;
                if (o->bias) v += o->bias[n];
                o->out[(m0 + m) * N + n] = v;
            }
        }
    }
}

static void run(const int8_t *x, int64_t M, int64_t K, const int8_t *w, int64_t N, const Out *o, int threads) {
    const int64_t blocks = (N + BLOCK - 1) / BLOCK;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n0 = b * BLOCK, n1 = n0 + BLOCK < N ? n0 + BLOCK : N;
        for (int64_t m0 = 0; m0 < M; m0 += ROWS)
            tile(x, m0, m0 + ROWS < M ? m0 + ROWS : M, K, w, n0, n1, N, o);
    }
}

/* Prompt rows: 4 rows of x against 2 rows of w per pass over K, the 8 sums in registers, |x|
 * computed once per row (xa) rather than once per pair: about 1.5x the rows-at-a-time tile. */
__attribute__((target("avx2")))
static void quad(const int8_t *x, const int8_t *xa, int64_t K, const int8_t *w, int64_t m, int64_t n,
                 int64_t N, int32_t *y) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t K32 = K & ~(int64_t)31;
    const int8_t *w0 = w + n * K, *w1 = w0 + K;
    __m256i acc[4][2];
    for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K32; k += 32) {
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w0 + k));
        const __m256i v1 = _mm256_loadu_si256((const __m256i *)(w1 + k));
        for (int i = 0; i < 4; i++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + (m + i) * K + k));
            const __m256i av = _mm256_loadu_si256((const __m256i *)(xa + (m + i) * K + k));
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(v0, xv)), ones));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(v1, xv)), ones));
        }
    }
    for (int i = 0; i < 4; i++) {
        const int8_t *xr = x + (m + i) * K;
        int32_t d0 = hsum(acc[i][0]), d1 = hsum(acc[i][1]);
        for (int64_t k = K32; k < K; k++) {
            d0 += (int32_t)xr[k] * (int32_t)w0[k];
            d1 += (int32_t)xr[k] * (int32_t)w1[k];
        }
        y[(m + i) * N + n] = d0;
        y[(m + i) * N + n + 1] = d1;
    }
}

__attribute__((target("avx2")))
static void absolute(const int8_t *x, int64_t n, int8_t *out) {   /* |x| <= 127: int8 values are >= -127 */
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        _mm256_storeu_si256((__m256i *)(out + i), _mm256_abs_epi8(_mm256_loadu_si256((const __m256i *)(x + i))));
    for (; i < n; i++) out[i] = (int8_t)(x[i] < 0 ? -x[i] : x[i]);
}

#define PROMPT_BLOCK 64   /* weight rows per block for prompt rows (even: pairs never straddle blocks) */

__attribute__((target("avx2")))
static void run_prompt(const int8_t *x, const int8_t *xa, int64_t M, int64_t K, const int8_t *w, int64_t N,
                       int32_t *y, int threads) {
    const int64_t M4 = M & ~(int64_t)3, N2 = N & ~(int64_t)1;
    const int64_t blocks = (N + PROMPT_BLOCK - 1) / PROMPT_BLOCK;
    const Out o = {y, 0, 0, 0, 0};
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n0 = b * PROMPT_BLOCK, n1 = n0 + PROMPT_BLOCK < N ? n0 + PROMPT_BLOCK : N;
        const int64_t pairs_end = n1 < N2 ? n1 : N2;
        for (int64_t m = 0; m < M4; m += 4)
            for (int64_t n = n0; n < pairs_end; n += 2) quad(x, xa, K, w, m, n, N, y);
        if (pairs_end < n1)                                 /* an odd last weight row */
            for (int64_t m0 = 0; m0 < M4; m0 += ROWS) tile(x, m0, m0 + ROWS < M4 ? m0 + ROWS : M4, K, w, pairs_end, n1, N, &o);
        if (M4 < M) tile(x, M4, M, K, w, n0, n1, N, &o);   /* the last 1-3 rows */
    }
}

/* x: (M, K) int8, w: (N, K) int8, y: (M, N) int32; all contiguous. Returns 0, or -1 without AVX2. */
int ks_int8_mm(const int8_t *x, int64_t M, int64_t K, const int8_t *w, int64_t N, int32_t *y, int threads) {
    if (!__builtin_cpu_supports("avx2")) return -1;
    if (M > ROWS) {
        int8_t *xa = malloc((size_t)(M * K));
        if (!xa) return -2;
        absolute(x, M * K, xa);
        run_prompt(x, xa, M, K, w, N, y, threads);
        free(xa);
        return 0;
    }
    const Out o = {y, 0, 0, 0, 0};
    run(x, M, K, w, N, &o, threads);
    return 0;
}

/* One decode row to int8 as Int8Linear._one_row does (a NaN in x gives an undefined row, as there). */
__attribute__((target("avx2")))
static float quantize_row(const float *x, int64_t K, int8_t *q) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const int64_t K8 = K & ~(int64_t)7;
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + k), abs_mask));
    float lanes[8], amax = 0.0f;
    _mm256_storeu_ps(lanes, vmax);
    for (int i = 0; i < 8; i++) amax = lanes[i] > amax ? lanes[i] : amax;
    for (int64_t k = K8; k < K; k++) amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
    const double s = (amax > 1e-30 ? (double)amax : 1e-30) / 127.0;
    const float inv = (float)(1.0 / s);
    const __m256 vinv = _mm256_set1_ps(inv);
    int32_t r[8];
    for (int64_t k = 0; k < K8; k += 8) {
        const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256((__m256i *)r, _mm256_cvtps_epi32(v));
        for (int i = 0; i < 8; i++) q[k + i] = (int8_t)r[i];
    }
    for (int64_t k = K8; k < K; k++) {
        const __m128 v = _mm_round_ss(_mm_setzero_ps(), _mm_set_ss(x[k] * inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q[k] = (int8_t)_mm_cvtss_si32(v);
    }
    return (float)s;
}

/* Decode rows, as Int8Linear._one_row and _step_rows compute them in torch, bit for bit:
 * per row of x (float32), step = max(max|x|, 1e-30) / 127 in double; x * (float)(1 / step),
 * rounded half to even, as int8; then (float)sum * (scale[n] * (float)step) (+ bias[n]).
 * x: (M, K) float32, xq: (M, K) int8 scratch, w: (N, K) int8, scale/bias: (N,), y: (M, N) float32.
 * At most ROWS rows. Returns 0, or -1 without AVX2 or with too many rows. */
int ks_int8_decode_rows(const float *x, int64_t M, int64_t K, int8_t *xq, const int8_t *w,
                        const float *scale, const float *bias, int64_t N, float *y, int threads) {
    if (!__builtin_cpu_supports("avx2") || M > ROWS) return -1;
    float step[ROWS];
    for (int64_t m = 0; m < M; m++) step[m] = quantize_row(x + m * K, K, xq + m * K);
    const Out o = {0, y, step, scale, bias};
    run(xq, M, K, w, N, &o, threads);
    return 0;
}

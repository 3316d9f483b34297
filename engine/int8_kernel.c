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

/* max |x[k]| over a row (exact, in any order). */
__attribute__((target("avx2")))
static float max_abs(const float *x, int64_t K) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const int64_t K8 = K & ~(int64_t)7;
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + k), abs_mask));
    float lanes[8], amax = 0.0f;
    _mm256_storeu_ps(lanes, vmax);
    for (int i = 0; i < 8; i++) amax = lanes[i] > amax ? lanes[i] : amax;
    for (int64_t k = K8; k < K; k++) amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
    return amax;
}

/* One decode row to int8 as Int8Linear._one_row does (a NaN in x gives an undefined row, as there). */
__attribute__((target("avx2")))
static float quantize_row(const float *x, int64_t K, int8_t *q) {
    const int64_t K8 = K & ~(int64_t)7;
    const float amax = max_abs(x, K);
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

/* ---- Prompt rows with 16-bit activations ------------------------------------------------
 * Each prompt row is quantized to int16 with one scale (step = max(max|x|, 1e-30) / 32767), and
 * multiplied by the int8 weights with madd (int16 x int16 pairs into int32): finer than the two
 * int8 rows of Int8Linear.fine (about 15 bits) at about half the instructions per product. The
 * sums are exact: an int32 lane takes at most LANE_STEPS products of 2 * 32767 * 127, then is
 * widened into int64; so a row's result depends on that row alone, however a prompt is chunked.
 * There is no torch twin: the engine names this format in its fingerprint (quantize.kernels). */
#define PREFETCH_ROWS 8  /* weight rows ahead that decode rows prefetch (4-32 measured: 8 best) */
#define LANE_STEPS 256   /* 16-wide steps per int32 lane before it is widened: 256 * 8.3e6 < 2^31 */

__attribute__((target("avx2")))
static float quantize_row16(const float *x, int64_t K, int16_t *q) {
    const float amax = max_abs(x, K);
    const double s = (amax > 1e-30 ? (double)amax : 1e-30) / 32767.0;
    const float inv = (float)(1.0 / s);
    const __m256 vinv = _mm256_set1_ps(inv), hi = _mm256_set1_ps(32767.0f), lo = _mm256_set1_ps(-32767.0f);
    const int64_t K16 = K & ~(int64_t)15;
    for (int64_t k = 0; k < K16; k += 16) {   /* half to even, as the 8-bit rows round; clamped to +-32767 */
        const __m256 a = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256 b = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i p = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(a, hi), lo)),
                                             _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(b, hi), lo)));
        _mm256_storeu_si256((__m256i *)(q + k), _mm256_permute4x64_epi64(p, 0xd8));   /* packs works per 128-bit half */
    }
    for (int64_t k = K16; k < K; k++) {
        float v = nearbyintf(x[k] * inv);
        q[k] = (int16_t)(v > 32767.0f ? 32767.0f : v < -32767.0f ? -32767.0f : v);
    }
    return (float)s;
}

__attribute__((target("avx2")))
static inline __m256i widen_add(__m256i acc64, __m256i lanes32) {   /* acc64 (4 x int64) += lanes32 (8 x int32) */
    acc64 = _mm256_add_epi64(acc64, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(lanes32)));
    return _mm256_add_epi64(acc64, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(lanes32, 1)));
}

__attribute__((target("avx2")))
static inline int64_t hsum64(__m256i v) {
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_cvtsi128_si64(_mm_add_epi64(s, _mm_unpackhi_epi64(s, s)));
}

/* R rows of x (int16) against C rows of w (int8), R <= 4, C <= 2, constants after inlining. */
__attribute__((target("avx2"), always_inline))
static inline void tile16(const int16_t *x, int64_t K, const int8_t *w, int R, int C, int64_t sums[4][2]) {
    const int64_t K16 = K & ~(int64_t)15;
    __m256i wide[4][2], acc[4][2];
    for (int i = 0; i < R; i++) for (int j = 0; j < C; j++) wide[i][j] = _mm256_setzero_si256();
    for (int64_t k0 = 0; k0 < K16; k0 += 16 * LANE_STEPS) {
        const int64_t k1 = k0 + 16 * LANE_STEPS < K16 ? k0 + 16 * LANE_STEPS : K16;
        for (int i = 0; i < R; i++) for (int j = 0; j < C; j++) acc[i][j] = _mm256_setzero_si256();
        int64_t k = k0;
        for (; k + 32 <= k1; k += 32) {            /* 32 weights a step: one load, two widenings */
            __m256i wa[2], wb[2];
            for (int j = 0; j < C; j++) {
                const __m256i w32 = _mm256_loadu_si256((const __m256i *)(w + j * K + k));
                wa[j] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w32));
                wb[j] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w32, 1));
            }
            for (int i = 0; i < R; i++) {
                const __m256i xa = _mm256_loadu_si256((const __m256i *)(x + i * K + k));
                const __m256i xb = _mm256_loadu_si256((const __m256i *)(x + i * K + k + 16));
                for (int j = 0; j < C; j++)
                    acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_add_epi32(_mm256_madd_epi16(xa, wa[j]),
                                                                             _mm256_madd_epi16(xb, wb[j])));
            }
        }
        for (; k < k1; k += 16) {
            __m256i wv[2];
            for (int j = 0; j < C; j++) wv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + j * K + k)));
            for (int i = 0; i < R; i++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + i * K + k));
                for (int j = 0; j < C; j++) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(xv, wv[j]));
            }
        }
        for (int i = 0; i < R; i++) for (int j = 0; j < C; j++) wide[i][j] = widen_add(wide[i][j], acc[i][j]);
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            int64_t d = hsum64(wide[i][j]);
            for (int64_t k = K16; k < K; k++) d += (int64_t)x[i * K + k] * (int64_t)w[j * K + k];
            sums[i][j] = d;
        }
}

/* The same tile16 with AVX-512 (BW for the widening, VNNI for vpdpwssd: one instruction multiplies
 * 32 int16 pairs and adds them into 16 int32 lanes), over all of K, the last partial step masked
 * (zeros add nothing). The integer sums are the AVX2 tile's exactly: the choice changes no bit.
 * Measured on a 2-core AMD EPYC with AVX-512 VNNI, 17-512 rows: 1.3-1.6x the AVX2 tile (about 230
 * against 145 GMAC/s). Decode rows have their own loop (row16_512). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))
static inline void tile16_512(const int16_t *x, int64_t K, const int8_t *w, int R, int C, int64_t sums[4][2]) {
    __m512i wide[4][2], acc[4][2];
    for (int i = 0; i < R; i++) for (int j = 0; j < C; j++) wide[i][j] = _mm512_setzero_si512();
    for (int64_t k0 = 0; k0 < K; k0 += 16 * LANE_STEPS) {
        const int64_t k1 = k0 + 16 * LANE_STEPS < K ? k0 + 16 * LANE_STEPS : K;
        for (int i = 0; i < R; i++) for (int j = 0; j < C; j++) acc[i][j] = _mm512_setzero_si512();
        for (int64_t k = k0; k < k1; k += 32) {     /* a lane takes 2 products a step: 256 * 8.3e6 < 2^31 */
            const __mmask32 live = k + 32 <= k1 ? (__mmask32)~0u : (__mmask32)((1u << (k1 - k)) - 1);
            __m512i wv[2];
            for (int j = 0; j < C; j++) wv[j] = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(live, w + j * K + k));
            for (int i = 0; i < R; i++) {
                const __m512i xv = _mm512_maskz_loadu_epi16(live, x + i * K + k);
                for (int j = 0; j < C; j++) acc[i][j] = _mm512_dpwssd_epi32(acc[i][j], xv, wv[j]);
            }
        }
        for (int i = 0; i < R; i++)
            for (int j = 0; j < C; j++) {
                wide[i][j] = _mm512_add_epi64(wide[i][j], _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc[i][j])));
                wide[i][j] = _mm512_add_epi64(wide[i][j], _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc[i][j], 1)));
            }
    }
    for (int i = 0; i < R; i++) for (int j = 0; j < C; j++) sums[i][j] = _mm512_reduce_add_epi64(wide[i][j]);
}

/* Decode rows (R <= 4) against one weight row with AVX-512: four accumulators a row, since each
 * vpdpwssd waits for the one before on its accumulator. With one accumulator a single row was 10-20%
 * slower than AVX2; with four, one row streamed a step's weights (80 layers of 4 MB, from DRAM) at
 * 32-38 GB/s against AVX2's 30-31 on the same EPYC. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))
static inline void row16_512(const int16_t *x, int64_t K, const int8_t *w, int R, int64_t sums[4][2]) {
    __m512i wide[4], acc[4][4];
    for (int i = 0; i < R; i++) wide[i] = _mm512_setzero_si512();
    for (int64_t k0 = 0; k0 < K; k0 += 16 * LANE_STEPS) {
        const int64_t k1 = k0 + 16 * LANE_STEPS < K ? k0 + 16 * LANE_STEPS : K;
        for (int i = 0; i < R; i++) for (int u = 0; u < 4; u++) acc[i][u] = _mm512_setzero_si512();
        int64_t k = k0;
        for (; k + 128 <= k1; k += 128) {
            __m512i wv[4];
            for (int u = 0; u < 4; u++) wv[u] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + k + 32 * u)));
            for (int i = 0; i < R; i++)
                for (int u = 0; u < 4; u++)
                    acc[i][u] = _mm512_dpwssd_epi32(acc[i][u], _mm512_loadu_si512(x + i * K + k + 32 * u), wv[u]);
        }
        for (; k < k1; k += 32) {
            const __mmask32 live = k + 32 <= k1 ? (__mmask32)~0u : (__mmask32)((1u << (k1 - k)) - 1);
            const __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(live, w + k));
            for (int i = 0; i < R; i++)
                acc[i][0] = _mm512_dpwssd_epi32(acc[i][0], _mm512_maskz_loadu_epi16(live, x + i * K + k), wv);
        }
        for (int i = 0; i < R; i++)
            for (int u = 0; u < 4; u++) {
                wide[i] = _mm512_add_epi64(wide[i], _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc[i][u])));
                wide[i] = _mm512_add_epi64(wide[i], _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc[i][u], 1)));
            }
    }
    for (int i = 0; i < R; i++) sums[i][0] = _mm512_reduce_add_epi64(wide[i]);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void rows16_512(const int16_t *xr, int R, int64_t K, const int8_t *wr, int C, int64_t sums[4][2]) {
    if (C == 2) {
        switch (R) {
        case 4: tile16_512(xr, K, wr, 4, 2, sums); break;
        case 3: tile16_512(xr, K, wr, 3, 2, sums); break;
        case 2: tile16_512(xr, K, wr, 2, 2, sums); break;
        default: tile16_512(xr, K, wr, 1, 2, sums); break;
        }
    } else {
        switch (R) {
        case 4: row16_512(xr, K, wr, 4, sums); break;
        case 3: row16_512(xr, K, wr, 3, sums); break;
        case 2: row16_512(xr, K, wr, 2, sums); break;
        default: row16_512(xr, K, wr, 1, sums); break;
        }
    }
}

/* Whether the 16-bit rows use AVX-512 VNNI: where the CPU has it, unless ks_use_avx512(0) said
 * not (the tests compare both paths on one machine). */
static int use512 = -1;

int ks_use_avx512(int on) {
    const int has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                    && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    use512 = on && has;
    return use512;
}

__attribute__((target("avx2")))
static void rows16(const int16_t *x, int64_t m, int R, int64_t K, const int8_t *w, int64_t n, int C, int wide,
                   int64_t sums[4][2]) {
    const int16_t *xr = x + m * K;
    const int8_t *wr = w + n * K;
    if (wide) { rows16_512(xr, R, K, wr, C, sums); return; }
    if (C == 2) {
        switch (R) {
        case 4: tile16(xr, K, wr, 4, 2, sums); break;
        case 3: tile16(xr, K, wr, 3, 2, sums); break;
        case 2: tile16(xr, K, wr, 2, 2, sums); break;
        default: tile16(xr, K, wr, 1, 2, sums); break;
        }
    } else {
        switch (R) {
        case 4: tile16(xr, K, wr, 4, 1, sums); break;
        case 3: tile16(xr, K, wr, 3, 1, sums); break;
        case 2: tile16(xr, K, wr, 2, 1, sums); break;
        default: tile16(xr, K, wr, 1, 1, sums); break;
        }
    }
}

/* y (M, N) float32 = prompt rows x (M, K) float32 times int8 w (N, K) with one scale per weight row:
 * y[m][n] = (float)sum * (scale[n] * step[m]) (+ bias[n]), sum the exact product of the int16 row
 * and the weight row. xq: (M, K) int16 scratch. Returns 0, or -1 without AVX2. */
int ks_int16_prompt_rows(const float *x, int64_t M, int64_t K, int16_t *xq, const int8_t *w,
                         const float *scale, const float *bias, int64_t N, float *y, int threads) {
    if (!__builtin_cpu_supports("avx2")) return -1;
    if (use512 < 0) ks_use_avx512(1);
    float *step = malloc((size_t)M * sizeof(float));
    if (!step) return -2;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t m = 0; m < M; m++) step[m] = quantize_row16(x + m * K, K, xq + m * K);
    const int64_t blocks = (N + PROMPT_BLOCK - 1) / PROMPT_BLOCK;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n0 = b * PROMPT_BLOCK, n1 = n0 + PROMPT_BLOCK < N ? n0 + PROMPT_BLOCK : N;
        int64_t sums[4][2];
        /* Decode rows (up to ROWS: a step and its drafted tokens): one weight row at a time, a
         * single stream through memory, measured 2x the pairs' speed from DRAM on 896-wide
         * layers; more rows (prompts, compute-bound): pairs of weight rows. */
        const int pair = M > ROWS ? 2 : 1;
        const int wide = use512;
        for (int64_t m = 0; m < M; m += 4) {
            const int R = M - m < 4 ? (int)(M - m) : 4;
            for (int64_t n = n0; n < n1; n += pair) {
                const int C = n1 - n < pair ? 1 : pair;
                /* Decode rows stream the weights once: ask for the row PREFETCH_ROWS ahead now. On
                 * Qwen 0.5B's layers this took a step's weights from 14.1 to 16.4 GB/s (2 threads,
                 * the AVX2 EPYC; a plain sum reads 17); the hardware prefetcher alone lags. */
                if (pair == 1 && n + PREFETCH_ROWS < N)
                    for (int64_t k = 0; k < K; k += 64) _mm_prefetch((const char *)(w + (n + PREFETCH_ROWS) * K + k), _MM_HINT_T0);
                rows16(xq, m, R, K, w, n, C, wide, sums);
                for (int i = 0; i < R; i++)
                    for (int j = 0; j < C; j++) {
                        float v = (float)sums[i][j] * (scale[n + j] * step[m + i]);
                        if (bias) v += bias[n + j];
                        y[(m + i) * N + n + j] = v;
                    }
            }
        }
    }
    free(step);
    return 0;
}

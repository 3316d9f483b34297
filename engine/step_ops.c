/* The small operations of a forward pass in C: RMSNorm and attention over the KV-cache
 * (every row in row-exact mode, decode rows otherwise: engine/native.py).
 *
 * Why: a decode step of Qwen2.5 0.5B runs some 1,500 torch operations besides its int8
 * products; on a 2-core AVX2 EPYC an RMSNorm of one 896-wide row took 64 us inside a step
 * (six aten operations) and the attention of one layer ~190 us (two bmm, a softmax, copies).
 * Each call here does one of them for all rows in one pass, no allocation on torch's side.
 *
 * Every row is computed alone, in a fixed order: the result for a row never depends on how
 * many rows a call has (a step that checks drafted tokens computes each row as a one-token
 * step would). float32 throughout; no fused multiply-add (-ffp-contract=off: measured no
 * faster here), so the build does not change the bits with the compiler's mood.
 */
#include <stdint.h>
#include <stdlib.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>

__attribute__((target("avx2")))
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y = x / sqrt(mean(x^2) + eps) * w, per row: x, y (M, D) contiguous (y may be x), w (D,).
 * Returns 0, or -1 without AVX2 or with D not a multiple of 8. */
__attribute__((target("avx2")))
int ks_rms_norm(const float *x, int64_t M, int64_t D, const float *w, float eps, float *y) {
    if (!__builtin_cpu_supports("avx2") || D % 8) return -1;
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * D;
        float *yr = y + m * D;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int64_t d = 0;
        for (; d + 16 <= D; d += 16) {
            const __m256 u = _mm256_loadu_ps(xr + d), v = _mm256_loadu_ps(xr + d + 8);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(u, u));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(v, v));
        }
        if (d < D) {
            const __m256 u = _mm256_loadu_ps(xr + d);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(u, u));
        }
        const double mean = (double)hsum_ps(_mm256_add_ps(a0, a1)) / (double)D;
        const __m256 r = _mm256_set1_ps((float)(1.0 / sqrt(mean + (double)eps)));
        for (d = 0; d < D; d += 8)
            _mm256_storeu_ps(yr + d, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + d), r), _mm256_loadu_ps(w + d)));
    }
    return 0;
}

/* exp(x) for x <= 0 (scores minus their maximum): range reduction by ln 2 and a degree-5
 * polynomial on [-ln2/2, ln2/2] (the Cephes coefficients), within 2 ulp of expf. */
__attribute__((target("avx2")))
static inline __m256 exp_nonpositive(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));               /* below: 0 to float precision */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(x, x)), x), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* Query heads h0..h0+hb (hb <= 4) of one row against key t: their scores, the key read once. */
__attribute__((target("avx2"), always_inline))
static inline void scores4(const float *q, int64_t D, const float *kr, int hb, float scale, float *out4) {
    __m256 acc[4];
    for (int j = 0; j < hb; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
        const __m256 kv = _mm256_loadu_ps(kr + d);
        for (int j = 0; j < hb; j++) acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(_mm256_loadu_ps(q + j * D + d), kv));
    }
    for (int j = 0; j < hb; j++) out4[j] = hsum_ps(acc[j]) * scale;
}

/* softmax of n scores in place; returns 1 / their sum of exponentials. */
__attribute__((target("avx2")))
static float softmax_unnormalized(float *s, int64_t n) {
    float mx = -INFINITY;
    for (int64_t t = 0; t < n; t++) mx = s[t] > mx ? s[t] : mx;
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        const __m256 p = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + t), vmx));
        _mm256_storeu_ps(s + t, p);
        vsum = _mm256_add_ps(vsum, p);
    }
    float sum = hsum_ps(vsum);
    if (t < n) {   /* the last 1-7 scores: padded with -inf, whose exp is 0 */
        float tail[8];
        for (int i = 0; i < 8; i++) tail[i] = t + i < n ? s[t + i] : -INFINITY;
        const __m256 p = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(tail), vmx));
        _mm256_storeu_ps(tail, p);
        for (int i = 0; t + i < n; i++) { s[t + i] = tail[i]; sum += tail[i]; }
    }
    return 1.0f / sum;
}

/* One query row of the G query heads that share a K/V head, over keys [lo, end):
 * out_h = softmax(q_h . k * scale) v, each key and value row read once for all G heads.
 * q: G rows of D; k, v: rows of D; s: scratch of G * (end - lo) floats; out: G rows at ostride. */
__attribute__((target("avx2")))
static void attend_group(const float *q, int64_t G, const float *k, const float *v, int64_t lo, int64_t end,
                         int64_t D, float scale, float *s, float *out, int64_t ostride) {
    const int64_t n = end - lo;
    for (int64_t t = 0; t < n; t++) {
        const float *kr = k + (lo + t) * D;
        for (int64_t h0 = 0; h0 < G; h0 += 4) {
            const int hb = G - h0 < 4 ? (int)(G - h0) : 4;
            float sc[4] = {0, 0, 0, 0};
            switch (hb) {     /* constant head counts, so the accumulators stay in registers */
            case 4: scores4(q + h0 * D, D, kr, 4, scale, sc); break;
            case 3: scores4(q + h0 * D, D, kr, 3, scale, sc); break;
            case 2: scores4(q + h0 * D, D, kr, 2, scale, sc); break;
            default: scores4(q + h0 * D, D, kr, 1, scale, sc); break;
            }
            for (int j = 0; j < hb; j++) s[(h0 + j) * n + t] = sc[j];
        }
    }
    float inv[G];
    for (int64_t h = 0; h < G; h++) inv[h] = softmax_unnormalized(s + h * n, n);
    for (int64_t h = 0; h < G; h++) {          /* out_h = sum over keys of p_h[u] v[u], in their order */
        const float *p = s + h * n;
        float *o = out + h * ostride;
        for (int64_t d0 = 0; d0 < D; d0 += 64) {  /* 64 dimensions at a time, in registers */
            const int w8 = (int)((D - d0 < 64 ? D - d0 : 64) / 8);
            __m256 acc[8];
            for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
            for (int64_t u = 0; u < n; u++) {
                const __m256 pu = _mm256_set1_ps(p[u]);
                const float *vr = v + (lo + u) * D + d0;
                for (int j = 0; j < w8; j++) acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(pu, _mm256_loadu_ps(vr + 8 * j)));
            }
            const __m256 r = _mm256_set1_ps(inv[h]);
            for (int j = 0; j < w8; j++) _mm256_storeu_ps(o + d0 + 8 * j, _mm256_mul_ps(acc[j], r));
        }
    }
}

/* Attention of M rows over the cache, query heads grouped by their K/V head.
 * q: (B, H, M, D) contiguous. k, v: the cache's buffers, element [b][g][t][d] at
 * b * bstride + g * hstride + t * D + d. Row i sees keys [max(0, end - window), end) with
 * end = end0 + i (window <= 0: all). out: (B, M, H, D), the layout the output projection reads.
 * One task per (batch, K/V head, row): each reads its keys and values once for its query heads.
 * With fewer such tasks than threads (a decode step of a model with one or two K/V heads: Gemma 3
 * 270M has one), each group's query heads are split between threads; every head is computed by
 * the same operations either way, so the split changes no bit.
 * Returns 0, or -1 without AVX2, with D not a multiple of 8, or without memory. */
int ks_step_attention(const float *q, int64_t B, int64_t H, int64_t M, int64_t D,
                      const float *k, const float *v, int64_t n_kv, int64_t bstride, int64_t hstride,
                      int64_t end0, int64_t window, float scale, float *out, int threads) {
    if (!__builtin_cpu_supports("avx2") || D % 8 || H % n_kv || end0 < 1) return -1;
    const int64_t G = H / n_kv, groups = B * n_kv * M;
    const int64_t splits = groups < threads ? (G < threads ? G : threads) : 1;
    const int64_t per_split = (G + splits - 1) / splits, tasks = groups * splits;
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *s = malloc((size_t)(G * (end0 + M) + G * D + 8) * sizeof(float));
        float *qrow = s ? s + G * (end0 + M) : NULL;   /* the G query rows of one row, contiguous */
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks; task++) {   /* every thread meets the loop, even without memory */
            if (!s) { failed = 1; continue; }
            const int64_t part = task % splits, group = task / splits;
            const int64_t i = group % M, g = (group / M) % n_kv, b = group / (M * n_kv);
            const int64_t h0 = part * per_split, hn = G - h0 < per_split ? G - h0 : per_split;
            if (hn <= 0) continue;
            const int64_t end = end0 + i, lo = window > 0 && end > window ? end - window : 0;
            for (int64_t h = 0; h < hn; h++)
                for (int64_t d = 0; d < D; d++) qrow[h * D + d] = q[((b * H + g * G + h0 + h) * M + i) * D + d];
            attend_group(qrow, hn, k + b * bstride + g * hstride, v + b * bstride + g * hstride, lo, end, D, scale,
                         s, out + ((b * M + i) * H + g * G + h0) * D, D);
        }
        free(s);
    }
    return failed ? -1 : 0;
}

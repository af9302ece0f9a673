/* One vocabulary tile of the logit lens, fused: every statistic in two passes over the tile.
 *
 * The Python reference, with the same state and the same update, is
 * lenslib.tile_update.torch_tile_update; read that first. Shapes (row-major, contiguous):
 *
 *   z            [pos, layer, cols]  float32  logits of one vocabulary tile, columns
 *                                             col0 .. col0 + cols - 1; the last layer is the
 *                                             model's final residual stream
 *   target_id    [pos]               int64    -1 for none
 *   target_logit [pos, layer]        float32  the target's logit, computed before the tiles
 *   top_val/id   [pos, layer, k]              running top-k, sorted descending (k may be 0)
 *   row_max      [pos, layer]        float32  running max over the columns seen so far
 *   sum_w        [pos, layer]        float64  sum_v exp(z_v - max)
 *   sum_wz       [pos, layer]        float64  sum_v exp(z_v - max) (z_v - max)
 *   sum_fz       [pos, layer]        float64  sum_v exp(zf_v - maxf) (z_v - max), zf the final layer
 *   above        [pos, layer]        int64    #{v != target : z_v > target_logit}
 *   target_val   [pos, layer]        float32  the target's logit as its tile has it
 *   scratch      [threads, cols]     float32  work space, a row per thread (lens_tile_max_threads)
 *
 * Pass 1 (per row) finds the tile max and feeds the running top-k: a 16-wide chunk max, and a
 * scalar insertion only for chunks that beat the current k-th value (rare after the first
 * tile). Pass 2 (per row, vectorised) rescales the sums to the new max and adds the tile's
 * terms and the rank count. The final layer goes first, so its weights exp(zf - maxf) are in `scratch` for the
 * other layers' KL term. Tile sums are float (8 lanes, at most cols/8 terms each) and are
 * added to float64 accumulators.
 *
 * Build: cc -O3 -march=native -fopenmp-simd -fno-math-errno -fno-trapping-math -fPIC -shared
 * (see lenslib/native_kernel.py); without the last two, gcc keeps the branches and is 4x slower.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define CHUNK 16

/* e^x for x <= 0 (Cephes expf: round to n ln 2, degree-6 polynomial, 2^n from exponent bits);
 * relative error ~1e-7; 0 below -87 (where e^x is no longer a normal float). */
static inline float exp_nonpos(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    union { int32_t i; float f; } pow2n;
    pow2n.i = ((int32_t)n + 127) << 23;
    return x < -87.0f ? 0.0f : y * pow2n.f;
}

/* Pass 1: returns max(running, tile max) and inserts tile values into the sorted top-k. */
static float scan_row(const float *z, int64_t cols, int64_t col0, int64_t k,
                      float *top_val, int64_t *top_id, float running_max) {
    float best = running_max;
    float kth = k > 0 ? top_val[k - 1] : INFINITY;
    for (int64_t start = 0; start < cols; start += CHUNK) {
        int64_t stop = start + CHUNK < cols ? start + CHUNK : cols;
        float chunk_max = -INFINITY;
#pragma omp simd reduction(max : chunk_max)
        for (int64_t v = start; v < stop; v++) chunk_max = z[v] > chunk_max ? z[v] : chunk_max;
        if (chunk_max > best) best = chunk_max;
        if (chunk_max <= kth) continue;
        for (int64_t v = start; v < stop; v++) {
            if (!(z[v] > kth)) continue;
            int64_t slot = k - 1;  /* strict '>' keeps the earlier column first on ties */
            while (slot > 0 && z[v] > top_val[slot - 1]) {
                top_val[slot] = top_val[slot - 1];
                top_id[slot] = top_id[slot - 1];
                slot--;
            }
            top_val[slot] = z[v];
            top_id[slot] = col0 + v;
            kth = top_val[k - 1];
        }
    }
    return best;
}

/* 1 if built with OpenMP: positions are then split over the OpenMP threads, which with torch's
 * bundled libgomp (same soname) are torch's own intra-op threads. */
int lens_tile_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* How many rows of `scratch` lens_tile_update may use. */
int lens_tile_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void lens_tile_update(const float *z, int64_t n_pos, int64_t n_layer, int64_t cols, int64_t col0,
                      const int64_t *target_id, const float *target_logit, int64_t k,
                      float *top_val, int64_t *top_id, float *row_max, double *sum_w,
                      double *sum_wz, double *sum_fz, int64_t *above, float *target_val,
                      float *scratch) {
#pragma omp parallel for schedule(static) if (n_pos > 1)
    for (int64_t p = 0; p < n_pos; p++) {
        const int64_t final = p * n_layer + n_layer - 1;
        const float *zf = z + final * cols;
#ifdef _OPENMP
        float *wf = scratch + cols * omp_get_thread_num();
#else
        float *wf = scratch;
#endif
        /* The final layer: its weights, relative to its new max, are kept for the KL term. */
        const float old_maxf = row_max[final];
        const float maxf = scan_row(zf, cols, col0, k, top_val + final * k, top_id + final * k, old_maxf);
        const double old_sum_wf = sum_w[final];
        const double scale_f = old_maxf == -INFINITY ? 0.0 : exp((double)old_maxf - maxf);

        for (int64_t i = 0; i < n_layer; i++) {
            const int64_t row = p * n_layer + (i == 0 ? n_layer - 1 : i - 1);  /* final first */
            const float *zr = z + row * cols;
            const float old_max = row_max[row];
            const float new_max = row == final ? maxf
                : scan_row(zr, cols, col0, k, top_val + row * k, top_id + row * k, old_max);
            const double shift = old_max == -INFINITY ? 0.0 : (double)old_max - new_max;
            const double scale = old_max == -INFINITY ? 0.0 : exp(shift);
            const int64_t tgt = target_id[p];
            const float t = tgt >= 0 ? target_logit[row] : INFINITY;  /* no target: counts 0 */
            float s_w = 0.0f, s_wz = 0.0f, s_fz = 0.0f, n_above = 0.0f;
            if (row == final) {
#pragma omp simd reduction(+ : s_w, s_wz, n_above)
                for (int64_t v = 0; v < cols; v++) {
                    float x = zr[v] - new_max;
                    float w = exp_nonpos(x);
                    wf[v] = w;
                    s_w += w;
                    s_wz += w > 0.0f ? w * x : 0.0f;
                    n_above += zr[v] > t ? 1.0f : 0.0f;
                }
                s_fz = s_wz;
            } else {
#pragma omp simd reduction(+ : s_w, s_wz, s_fz, n_above)
                for (int64_t v = 0; v < cols; v++) {
                    float x = zr[v] - new_max;
                    float w = exp_nonpos(x);
                    s_w += w;
                    s_wz += w > 0.0f ? w * x : 0.0f;
                    s_fz += wf[v] > 0.0f ? wf[v] * x : 0.0f;
                    n_above += zr[v] > t ? 1.0f : 0.0f;
                }
            }
            if (tgt >= 0) {
                int64_t own = tgt - col0;  /* the target never counts itself */
                if (own >= 0 && own < cols) {
                    if (zr[own] > t) n_above -= 1.0f;
                    target_val[row] = zr[own];
                }
                above[row] += (int64_t)n_above;
            }
            /* Rescale to the new max: w -> w * scale, (z - max) -> (z - max) + shift. */
            sum_wz[row] = scale * (sum_wz[row] + shift * sum_w[row]) + s_wz;
            sum_fz[row] = scale_f * (sum_fz[row] + shift * old_sum_wf) + s_fz;
            sum_w[row] = scale * sum_w[row] + s_w;
            row_max[row] = new_max;
        }
    }
}

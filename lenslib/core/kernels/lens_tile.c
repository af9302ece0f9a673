/* One vocabulary tile of the logit lens, fused: every statistic in one pass over each row of the
 * tile, in the usual case.
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
 * Per row (row_update): one vectorised pass takes w = exp(z - m) from the row's running max m
 * of the earlier tiles, and sums w, w (z - m), wf (z - m) and the rank count while it finds the
 * tile's max. Where the tile holds a larger logit, the pass is redone from that new max (the row
 * is in the L1 cache by then); the first tile's max is found by a pass of its own. So the sums
 * are always relative to the true running max, as in the torch reference. The running top-k is
 * touched only when the tile's max beats its k-th value (rare after the first tiles): a 16-wide
 * chunk max, then a scalar insertion. The final layer goes first, so its weights
 * exp(zf - maxf) are in `scratch` for the other layers' KL term. Tile sums are float (one per
 * vector lane, at most cols/8 terms each) and are added to float64 accumulators.
 *
 * Measured on real SmolLM2 tiles (66 positions x 31 layers x 2048 columns) on the 2-core AMD
 * EPYC: 0.52 ns per logit on one core, 0.28 on two (a max pass, then a sums pass: 0.62 / 0.36).
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

/* e^x (Cephes expf: round to n ln 2, degree-6 polynomial, 2^n from exponent bits); relative
 * error ~1e-7 for -87 <= x <= 87; 0 below -87 (where e^x is no longer a normal float). Above 87
 * it returns e^87: such values only arise in a pass whose sums are then redone (row_update). */
static inline float exp_clamped(float x) {
    float xc = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
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

/* The max of `cols` values: a row of the tile, or a chunk of one (-inf when empty). */
static float row_max_of(const float *z, int64_t cols) {
    float best = -INFINITY;
#pragma omp simd reduction(max : best)
    for (int64_t v = 0; v < cols; v++) best = z[v] > best ? z[v] : best;
    return best;
}

/* Inserts the row's values above the current k-th into the sorted top-k. Called only when the
 * tile's max beats the k-th value (rare after the first tiles): a 16-wide chunk max skips chunks
 * with nothing to insert. */
static void insert_top_k(const float *z, int64_t cols, int64_t col0, int64_t k,
                         float *top_val, int64_t *top_id) {
    float kth = top_val[k - 1];
    for (int64_t start = 0; start < cols; start += CHUNK) {
        int64_t stop = start + CHUNK < cols ? start + CHUNK : cols;
        if (row_max_of(z + start, stop - start) <= kth) continue;
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
}

/* One row's tile sums relative to `ref` (w_v = exp(z_v - ref)): s[0] = sum w, s[1] = sum w x,
 * s[2] = sum wf x (0 when wf_in is NULL), s[3] = #{z_v > t}, with x = z - ref. Writes w into
 * wf_out unless it is NULL. Returns the row's max, so that the caller can tell whether `ref` was
 * below it (the sums are then discarded and redone from the new max). */
static float row_sums(const float *zr, int64_t cols, float ref, float t, const float *wf_in,
                      float *wf_out, float s[4]) {
    float tile_max = -INFINITY, s_w = 0.0f, s_wz = 0.0f, s_fz = 0.0f, n_above = 0.0f;
    if (wf_out != NULL) {
#pragma omp simd reduction(max : tile_max) reduction(+ : s_w, s_wz, n_above)
        for (int64_t v = 0; v < cols; v++) {
            float x = zr[v] - ref;
            float w = exp_clamped(x);
            wf_out[v] = w;
            tile_max = zr[v] > tile_max ? zr[v] : tile_max;
            s_w += w;
            s_wz += w > 0.0f ? w * x : 0.0f;
            n_above += zr[v] > t ? 1.0f : 0.0f;
        }
        s_fz = s_wz;
    } else {
#pragma omp simd reduction(max : tile_max) reduction(+ : s_w, s_wz, s_fz, n_above)
        for (int64_t v = 0; v < cols; v++) {
            float x = zr[v] - ref;
            float w = exp_clamped(x);
            tile_max = zr[v] > tile_max ? zr[v] : tile_max;
            s_w += w;
            s_wz += w > 0.0f ? w * x : 0.0f;
            s_fz += wf_in[v] > 0.0f ? wf_in[v] * x : 0.0f;
            n_above += zr[v] > t ? 1.0f : 0.0f;
        }
    }
    s[0] = s_w; s[1] = s_wz; s[2] = s_fz; s[3] = n_above;
    return tile_max;
}

/* Sums relative to the row's running max after this tile, which is returned; the tile's own max
 * goes to *tile_max. The running max from earlier tiles is tried first: one pass over the row,
 * and the usual case once the row's top logit has been seen. Where this tile holds a larger
 * logit, the pass is redone from the new max (the row is still in the L1 cache); the first
 * tile's max is found by a pass of its own. */
static float row_update(const float *zr, int64_t cols, float old_max, float t, const float *wf_in,
                        float *wf_out, float s[4], float *tile_max) {
    float ref = old_max == -INFINITY ? row_max_of(zr, cols) : old_max;
    *tile_max = row_sums(zr, cols, ref, t, wf_in, wf_out, s);
    if (*tile_max > ref) {
        ref = *tile_max;
        row_sums(zr, cols, ref, t, wf_in, wf_out, s);
    }
    return ref;
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
#ifdef _OPENMP
        float *wf = scratch + cols * omp_get_thread_num();
#else
        float *wf = scratch;
#endif
        /* The final layer first: its weights, relative to its new max, are kept in wf for the
         * other layers' KL term. */
        const int64_t tgt = target_id[p];
        const float old_maxf = row_max[final];
        const double old_sum_wf = sum_w[final];
        float maxf = 0.0f;
        double scale_f = 0.0;

        for (int64_t i = 0; i < n_layer; i++) {
            const int64_t row = p * n_layer + (i == 0 ? n_layer - 1 : i - 1);  /* final first */
            const float *zr = z + row * cols;
            const float old_max = row_max[row];
            const float t = tgt >= 0 ? target_logit[row] : INFINITY;  /* no target: counts 0 */
            float s[4], tile_max;
            const float new_max = row == final
                ? row_update(zr, cols, old_max, t, NULL, wf, s, &tile_max)
                : row_update(zr, cols, old_max, t, wf, NULL, s, &tile_max);
            if (row == final) {
                maxf = new_max;
                scale_f = old_maxf == -INFINITY ? 0.0 : exp((double)old_maxf - maxf);
            }
            if (k > 0 && tile_max > top_val[row * k + k - 1])
                insert_top_k(zr, cols, col0, k, top_val + row * k, top_id + row * k);
            const double shift = old_max == -INFINITY ? 0.0 : (double)old_max - new_max;
            const double scale = old_max == -INFINITY ? 0.0 : exp(shift);
            const float s_w = s[0], s_wz = s[1], s_fz = s[2];
            float n_above = s[3];
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

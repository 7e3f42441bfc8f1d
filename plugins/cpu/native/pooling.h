/* 2-D MaxPool and AveragePool over NCHW float32 planes, one output row per task.

   For each output row and each window tap (ky, kx), the taps that fall on the input are a
   contiguous range of output columns. Strides 1 and 2 take the row 16 columns at a time: each
   vector of outputs is accumulated in a register over every tap (a tap's lanes outside its
   range filled with the neutral value, -inf or 0) and stored once, so the row is never read
   back between taps (a masked store followed by a load of the same bytes does not forward: on
   Zen 4 the tap-by-tap loop this replaced took 6x onnxruntime's time); other strides go column
   by column. Padding is never materialized: a max skips the taps outside the input (as a -inf
   pad), an average divides by the count native.py computes with the registry's rule
   (count_include_pad, ceil_mode's tail, the opset's reading of a window wider than the input).
   A max of stride 1 or 2 first folds the window's rows into one (a max is separable: a 3x3
   window costs 3 + 3 taps, not 9); an average takes its taps in the same order (ky, then kx)
   on every path. A NaN in a window makes its max NaN, as in NumPy. */
#ifndef GRAPHOPT_POOLING_H
#define GRAPHOPT_POOLING_H

/* geometry (int64): planes, H, W, Ho, Wo, kh, kw, sh, sw, dh, dw, pad top, pad left, average */
enum { PL_PLANES, PL_H, PL_W, PL_HO, PL_WO, PL_KH, PL_KW, PL_SH, PL_SW, PL_DH, PL_DW, PL_PT, PL_PL, PL_AVG, PL_HEAD };

typedef struct {
    const long long* g;
    const float* x;
    const float* count; /* Ho * Wo divisors of an average */
    float* y;
} pool_job;

/* the max of the pool: NaN once either is NaN (the first NaN kept), else the larger */
static inline float pool_max(float a, float v) { return v > a || v != v ? (a != a ? a : v) : a; }

#define POOL_ROW_MAX 4096 /* widest input row whose window rows a max folds into one first */

static void pool_rows(void* ctx, long begin, long end)
{
    const pool_job* j = ctx;
    const long long* g = j->g;
    const long H = g[PL_H], W = g[PL_W], Ho = g[PL_HO], Wo = g[PL_WO], sw = g[PL_SW], dw = g[PL_DW], pl = g[PL_PL];
    const long KW = g[PL_KW];
    const int avg = (int)g[PL_AVG];
    const float neutral = avg ? 0.0f : -INFINITY;
    long lo[64], hi[64], offs[64]; /* per kx: input column of output column ox is ox * sw + off; valid ox in [lo, hi) */
    if (KW > 64) return;           /* native.py sends no wider window */
    for (long kx = 0; kx < KW; kx++) {
        long off = kx * dw - pl;
        offs[kx] = off;
        lo[kx] = off >= 0 ? 0 : (-off + sw - 1) / sw;
        hi[kx] = W - 1 - off < 0 ? 0 : (W - 1 - off) / sw + 1;
        if (hi[kx] > Wo) hi[kx] = Wo;
    }
    float fold[POOL_ROW_MAX + VL] __attribute__((aligned(64)));
    for (long t = begin; t < end; t++) {
        long plane = t / Ho, oy = t % Ho;
        const float* xp = j->x + plane * H * W;
        float* yr = j->y + (plane * Ho + oy) * Wo;
        long ky0 = 0, ky1 = g[PL_KH]; /* the window rows on the input */
        const long iy0 = oy * g[PL_SH] - g[PL_PT];
        while (ky0 < ky1 && iy0 + ky0 * g[PL_DH] < 0) ky0++;
        while (ky1 > ky0 && iy0 + (ky1 - 1) * g[PL_DH] >= H) ky1--;
        const float* c = avg ? j->count + oy * Wo : 0;
        if (sw <= 2) {
            const float* rows = xp + iy0 * W; /* window row ky at rows + ky * rstep */
            long rstep = g[PL_DH] * W;
            if (!avg && ky1 - ky0 > 1 && W <= POOL_ROW_MAX) {
                /* a max is separable: the window's rows folded into one first (a NaN anywhere in a
                   column makes the column NaN), then only the columns' taps per output */
                for (long i = 0; i < W; i += VL) {
                    const int n = W - i < VL ? (int)(W - i) : VL;
                    v16 m = vsplat(-INFINITY);
                    vnan nan = {0};
                    for (long ky = ky0; ky < ky1; ky++) {
                        const float* r = rows + ky * rstep + i;
                        v16 v = n == VL ? *(const v16u*)r : vload_lanes(r, 1, 0, n, vsplat(-INFINITY));
                        m = vmax_acc(m, v, &nan);
                    }
                    *(v16*)(fold + i) = vmax_done(m, nan);
                }
                rows = fold, rstep = 0, ky0 = 0, ky1 = 1;
            }
            for (long ox = 0; ox < Wo; ox += VL) {
                const int n = Wo - ox < VL ? (int)(Wo - ox) : VL;
                v16 acc = vsplat(neutral);
                vnan nan = {0};
                for (long ky = ky0; ky < ky1; ky++) {
                    const float* row = rows + ky * rstep;
                    for (long kx = 0; kx < KW; kx++) {
                        long l0 = lo[kx] - ox, l1 = hi[kx] - ox;
                        if (l0 < 0) l0 = 0;
                        if (l1 > n) l1 = n;
                        if (l1 <= l0) continue;
                        const float* src = row + offs[kx] + ox * sw;
                        v16 v = l0 == 0 && l1 == VL && sw == 1 ? *(const v16u*)src
                                                                : vload_lanes(src, (int)sw, (int)l0, (int)l1, vsplat(neutral));
                        if (avg) {
                            acc += v;
                        } else {
                            acc = vmax_acc(acc, v, &nan);
                        }
                    }
                }
                if (avg) acc = acc / (n == VL ? *(const v16u*)(c + ox) : vload_lanes(c + ox, 1, 0, n, vsplat(1.0f)));
                else acc = vmax_done(acc, nan);
                if (n == VL) *(v16u*)(yr + ox) = acc;
                else vstore_n(yr + ox, acc, n);
            }
            continue;
        }
        for (long ox = 0; ox < Wo; ox++) {
            float acc = neutral;
            for (long ky = ky0; ky < ky1; ky++) {
                const float* row = xp + (iy0 + ky * g[PL_DH]) * W;
                for (long kx = 0; kx < KW; kx++) {
                    if (ox < lo[kx] || ox >= hi[kx]) continue;
                    float v = row[offs[kx] + ox * sw];
                    acc = avg ? acc + v : pool_max(acc, v);
                }
            }
            yr[ox] = avg ? acc / c[ox] : acc;
        }
    }
}

#endif

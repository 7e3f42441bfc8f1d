/* 2-D MaxPool and AveragePool over NCHW float32 planes, one output row per task.

   For each output row and each window tap (ky, kx), the taps that fall on the input are a
   contiguous range of output columns; the row is accumulated tap by tap over that range (a
   loop GCC vectorizes), so padding is never materialized: a max skips the taps outside the
   input (as a -inf pad), an average divides by the count native.py computes with the
   registry's rule (count_include_pad, ceil_mode's tail, the opset's reading of a window
   wider than the input). NaN propagates through the max as in NumPy. */
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

static void pool_rows(void* ctx, long begin, long end)
{
    const pool_job* j = ctx;
    const long long* g = j->g;
    const long H = g[PL_H], W = g[PL_W], Ho = g[PL_HO], Wo = g[PL_WO], sw = g[PL_SW], dw = g[PL_DW], pl = g[PL_PL];
    const int avg = (int)g[PL_AVG];
    for (long t = begin; t < end; t++) {
        long plane = t / Ho, oy = t % Ho;
        const float* xp = j->x + plane * H * W;
        float* yr = j->y + (plane * Ho + oy) * Wo;
        for (long ox = 0; ox < Wo; ox++) yr[ox] = avg ? 0.0f : -INFINITY;
        for (long ky = 0; ky < g[PL_KH]; ky++) {
            long iy = oy * g[PL_SH] - g[PL_PT] + ky * g[PL_DH];
            if (iy < 0 || iy >= H) continue;
            const float* row = xp + iy * W;
            for (long kx = 0; kx < g[PL_KW]; kx++) {
                long off = kx * dw - pl; /* input column of output column ox: ox * sw + off */
                long lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
                long hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / sw + 1;
                if (hi > Wo) hi = Wo;
                const float* src = row + off;
                if (avg) {
                    if (sw == 1)
                        for (long ox = lo; ox < hi; ox++) yr[ox] += src[ox];
                    else
                        for (long ox = lo; ox < hi; ox++) yr[ox] += src[ox * sw];
                } else if (sw <= 2) { /* the scalar loop below, 16 columns at a time (the last masked) */
                    const v16i even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
                    for (long ox = lo; ox < hi; ox += VL) {
                        int n = hi - ox < VL ? (int)(hi - ox) : VL;
                        v16 v;
                        if (sw == 1) {
                            v = n == VL ? *(const v16u*)(src + ox) : vload_n(src + ox, n);
                        } else { /* the even lanes of 2n - 1 floats: nothing past the last column read */
                            int span = 2 * n - 1;
                            v16 a0 = span >= VL ? *(const v16u*)(src + 2 * ox) : vload_n(src + 2 * ox, span);
                            v16 a1 = span > VL ? vload_n(src + 2 * ox + VL, span - VL) : vsplat(0.0f);
                            v = __builtin_shuffle(a0, a1, even);
                        }
                        v16 a = n == VL ? *(v16u*)(yr + ox) : vload_n(yr + ox, n);
                        v16 r = vsel((v > a) | (v != v), vsel(a != a, a, v), a);
                        if (n == VL) *(v16u*)(yr + ox) = r;
                        else vstore_n(yr + ox, r, n);
                    }
                } else {
                    for (long ox = lo; ox < hi; ox++) {
                        float v = src[ox * sw], a = yr[ox];
                        yr[ox] = v > a || v != v ? (a != a ? a : v) : a;
                    }
                }
            }
        }
        if (avg) {
            const float* c = j->count + oy * Wo;
            for (long ox = 0; ox < Wo; ox++) yr[ox] /= c[ox];
        }
    }
}

#endif

/* The depthwise convolution (one output per input channel) with 16 channels in the vector lanes,
   as onnxruntime's NCHWc kernels hold them, over NCHW tensors: a task is one image's block of 16
   channels. Its input planes are transposed (16x16 blocks in registers) into one padded buffer
   of [rows][columns][16 channels], zero borders included; each output position is then one
   vector of 16 channels summing, tap by tap, the input vector at that tap times the tap's 16
   weights (aligned loads, no shuffles, any stride or dilation), DWL_R positions of a row at a
   time, the bias and the activation or clamp applied in the lanes; the block is then transposed
   back into the channels' planes (a residual added there, then the clamp, as dw_store does).

   Row vectorization (depthwise.h) fills a vector only where a row is 16 columns or more: a 7x7
   plane used 7 of 16 lanes and a stride-2 conv needed its phase planes split first; here every
   lane is a channel whatever the plane; but the transposes cost about what that saves on rows of
   14, so native.py sends only narrower planes here. Each output sums its taps row by row from 0,
   then adds the bias (depthwise.h's dw_block order; its stride-1 windows sum column by column,
   within float32 rounding of it). Included by kernels.c after depthwise.h. */
#ifndef GRAPHOPT_DWLANES_H
#define GRAPHOPT_DWLANES_H

#define DWL_R 8 /* output positions per register block (with the tap's weights: 9 registers) */


/* r[i][l] = r[l][i]: four rounds of swapping blocks of 8, 4, 2 and 1 lanes between row pairs */
static inline __attribute__((always_inline)) void transpose16(v16* r)
{
    static const v16i lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    static const v16i hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    static const v16i lo4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
    static const v16i hi4 = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
    static const v16i lo2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    static const v16i hi2 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    static const v16i lo1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    static const v16i hi1 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
#define DWL_ROUND(b, lo, hi)                                   \
    for (int i = 0; i < VL; i++)                               \
        if (!(i & (b))) {                                      \
            v16 a = r[i], c = r[i + (b)];                      \
            r[i] = __builtin_shuffle(a, c, lo);                \
            r[i + (b)] = __builtin_shuffle(a, c, hi);          \
        }
    DWL_ROUND(8, lo8, hi8)
    DWL_ROUND(4, lo4, hi4)
    DWL_ROUND(2, lo2, hi2)
    DWL_ROUND(1, lo1, hi1)
#undef DWL_ROUND
}

/* each pool thread's buffer of at least n floats, 64-byte aligned, kept for its later convs */
static float* dwl_buffer(long n)
{
    static __thread float* buf;
    static __thread long cap;
    if (n > cap) {
        free(buf);
        long bytes = (n * (long)sizeof(float) + 63) / 64 * 64;
        if (!(buf = aligned_alloc(64, bytes))) abort();
        cap = n;
    }
    return buf;
}

/* acc[r] (r < NR) of the positions ox0 .. ox0 + NR - 1 of output row oy, then + bias into o: the
   generic loop, each tap's input an FMA's memory operand */
/* what a block's sums become in the lanes: + bias, then the activation or the clamp (where no
   residual waits to be added in the planes) */
typedef struct {
    v16 bias, lo, hi;
    const xact* act;
    int finish;
} dwl_fin;

static inline __attribute__((always_inline)) v16 dwl_finish(const dwl_fin* f, v16 a)
{
    a = a + f->bias;
    if (!f->finish) return a;
    if (f->act) return xact_apply(f->act, a);
    a = vsel(a < f->lo, f->lo, a); /* NaN passes, as in dw_store */
    return vsel(a > f->hi, f->hi, a);
}

static inline __attribute__((always_inline)) void dwl_block(const float* t, long Wp, const float* wt, long Cpad,
                                                            const long long* e, int oy, int ox0, const dwl_fin* fin,
                                                            float* o, const int NR)
{
    v16 acc[DWL_R];
    for (int r = 0; r < NR; r++) acc[r] = (v16){0};
    const long step = e[DL_SX] * VL;
    for (long ky = 0; ky < e[DL_KH]; ky++) {
        const float* row = t + ((long)oy * e[DL_SY] + ky * e[DL_DY]) * Wp * VL + (long)ox0 * step;
        for (long kx = 0; kx < e[DL_KW]; kx++) {
            const v16 wv = *(const v16u*)(wt + (ky * e[DL_KW] + kx) * Cpad);
            const float* p = row + kx * e[DL_DX] * VL;
            for (int r = 0; r < NR; r++) acc[r] += wv * *(const v16*)(p + r * step);
        }
    }
    for (int r = 0; r < NR; r++) *(v16*)(o + r * VL) = dwl_finish(fin, acc[r]);
}

/* the same sums for a window KW wide at stride SX, dilation 1 (constants once inlined): a window
   row's input vectors are loaded once into registers and shared by the NR positions and KW taps
   that read them ((NR - 1) SX + KW loads where the generic loop makes NR KW) */
static inline __attribute__((always_inline)) void dwl_block_rows(const float* t, long Wp, const float* wt, long Cpad,
                                                                 const long long* e, int oy, int ox0,
                                                                 const dwl_fin* fin, float* o, const int NR,
                                                                 const int KW, const int SX)
{
    enum { NVMAX = (DWL_R - 1) * 2 + 7 };
    const int NV = (NR - 1) * SX + KW;
    v16 acc[DWL_R];
    for (int r = 0; r < NR; r++) acc[r] = (v16){0};
    for (long ky = 0; ky < e[DL_KH]; ky++) {
        const float* row = t + ((long)oy * e[DL_SY] + ky * e[DL_DY]) * Wp * VL + (long)ox0 * SX * VL;
        v16 v[NVMAX];
        for (int i = 0; i < NV; i++) v[i] = *(const v16*)(row + i * VL);
        for (int kx = 0; kx < KW; kx++) {
            const v16 wv = *(const v16u*)(wt + (ky * KW + kx) * Cpad);
            for (int r = 0; r < NR; r++) acc[r] += wv * v[r * SX + kx];
        }
    }
    for (int r = 0; r < NR; r++) *(v16*)(o + r * VL) = dwl_finish(fin, acc[r]);
}

/* one output row, DWL_R positions at a time (fewer at its end) */
static void dwl_row(const float* t, long Wp, const float* wt, long Cpad, const long long* e, int oy, long Wo,
                    const dwl_fin* fin, float* o)
{
    const int kw = (int)e[DL_KW], sx = (int)e[DL_SX];
    const int shape = e[DL_DX] != 1 ? 0 : kw == 3 && sx == 1 ? 1 : kw == 3 && sx == 2 ? 2 : kw == 5 && sx == 1 ? 3
                    : kw == 5 && sx == 2 ? 4 : kw == 7 && sx == 1 ? 5 : 0;
    for (int ox = 0; ox < Wo; ox += DWL_R) {
        float* op = o + ((long)oy * Wo + ox) * VL;
        const int nr = Wo - ox < DWL_R ? (int)(Wo - ox) : DWL_R;
#define DWL_SHAPES(R)                                                                   \
    switch (shape) {                                                                    \
    case 1: dwl_block_rows(t, Wp, wt, Cpad, e, oy, ox, fin, op, R, 3, 1); break;       \
    case 2: dwl_block_rows(t, Wp, wt, Cpad, e, oy, ox, fin, op, R, 3, 2); break;       \
    case 3: dwl_block_rows(t, Wp, wt, Cpad, e, oy, ox, fin, op, R, 5, 1); break;       \
    case 4: dwl_block_rows(t, Wp, wt, Cpad, e, oy, ox, fin, op, R, 5, 2); break;       \
    case 5: dwl_block_rows(t, Wp, wt, Cpad, e, oy, ox, fin, op, R, 7, 1); break;       \
    default: dwl_block(t, Wp, wt, Cpad, e, oy, ox, fin, op, R);                        \
    }
        if (nr == DWL_R) {
            DWL_SHAPES(DWL_R)
        } else {
            switch (nr) {
#define DWL_TAIL(R) case R: DWL_SHAPES(R) break;
            DWL_TAIL(1) DWL_TAIL(2) DWL_TAIL(3) DWL_TAIL(4) DWL_TAIL(5) DWL_TAIL(6) DWL_TAIL(7)
#undef DWL_TAIL
            }
        }
#undef DWL_SHAPES
    }
}

/* task = image * blocks + block of 16 channels (the last block may hold fewer) */
static void dwlanes_tasks(const conv_job* j, long begin, long end, float* scratch, float lo, float hi)
{
    const long long* g = j->g;
    const long long* e = g + G_HEAD + 9 * g[G_COPIES];
    const long H = g[G_H], W = g[G_W], Ho = g[G_HO], Wo = g[G_WO], K = g[G_K];
    const long channels = g[G_G] * g[G_M], blocks = (channels + VL - 1) / VL, Cpad = blocks * VL;
    const long Hp = (Ho - 1) * e[DL_SY] + (e[DL_KH] - 1) * e[DL_DY] + 1;
    const long Wp = (Wo - 1) * e[DL_SX] + (e[DL_KW] - 1) * e[DL_DX] + 1;
    const long pt = e[DL_PT], pl = e[DL_PL], plane = Ho * Wo;
    const xact* act = j->epilogue && j->epilogue->act.kind ? &j->epilogue->act : NULL;
    float* t = dwl_buffer(Hp * Wp * VL + (Ho * Wo + VL) * VL);
    float* o = t + Hp * Wp * VL; /* the block's outputs, [position][16 channels] */
    for (long task = begin; task < end; task++) {
        const long n = task / blocks, c0 = task % blocks * VL;
        const int nc = channels - c0 < VL ? (int)(channels - c0) : VL;
        const float* x = j->x + (n * channels + c0) * H * W;
        /* the padded input, [Hp][Wp][16]: rows and columns outside the image zero */
        for (long r = 0; r < Hp; r++) {
            float* tr = t + r * Wp * VL;
            const long iy = r - pt;
            if (iy < 0 || iy >= H) {
                memset(tr, 0, Wp * VL * sizeof(float));
                continue;
            }
            const long q0 = pl < Wp ? pl : Wp, q1 = pl + W < Wp ? pl + W : Wp; /* the image's columns here */
            memset(tr, 0, q0 * VL * sizeof(float));
            memset(tr + q1 * VL, 0, (Wp - q1) * VL * sizeof(float));
            const float* xr = x + iy * W - pl;
            for (long q = q0; q < q1; q += VL) {
                const int m = q1 - q < VL ? (int)(q1 - q) : VL;
                v16 v[VL];
                if (m == VL && nc == VL) {
                    for (int c = 0; c < VL; c++) v[c] = *(const v16u*)(xr + c * H * W + q);
                } else {
                    for (int c = 0; c < VL; c++) v[c] = c < nc ? vload_n(xr + c * H * W + q, m) : (v16){0};
                }
                transpose16(v);
                if (m == VL) {
                    for (int i = 0; i < VL; i++) *(v16*)(tr + (q + i) * VL) = v[i];
                } else {
                    for (int i = 0; i < m; i++) *(v16*)(tr + (q + i) * VL) = v[i];
                }
            }
        }
        /* the outputs, DWL_R positions of a row at a time, finished in the lanes unless a residual
           is still to be added */
        dwl_fin fin = {j->bias ? (nc == VL ? *(const v16u*)(j->bias + c0) : vload_n(j->bias + c0, nc)) : (v16){0},
                       vsplat(lo), vsplat(hi), act, act || !j->res};
        const float* wt = j->w + c0;
        for (int oy = 0; oy < Ho; oy++) dwl_row(t, Wp, wt, Cpad, e, oy, Wo, &fin, o);
        /* back to the channels' planes, 16 positions at a time */
        float* yb = j->y + (n * channels + c0) * plane;
        const float* rb = j->res ? j->res + (n * channels + c0) * plane : NULL;
        for (long p = 0; p < plane; p += VL) {
            const int m = plane - p < VL ? (int)(plane - p) : VL;
            v16 v[VL];
            for (int i = 0; i < VL; i++) v[i] = i < m ? *(const v16*)(o + (p + i) * VL) : (v16){0};
            transpose16(v);
            if (rb) { /* acc + bias + residual, then the clamp, as dw_store */
                for (int c = 0; c < nc; c++) {
                    dw_chan ch = {NULL, NULL, NULL, rb + c * plane, yb + c * plane, 0, 0, 0, 0, 0, 0.0f, lo, hi, NULL};
                    dw_store(&ch, v[c], p, m);
                }
            } else if (m == VL) {
                for (int c = 0; c < nc; c++) *(v16u*)(yb + c * plane + p) = v[c];
            } else {
                for (int c = 0; c < nc; c++) vstore_n(yb + c * plane + p, v[c], m);
            }
        }
        if (j->epilogue && !act) /* another program: over the planes just stored, still in cache */
            for (int c = 0; c < nc; c++) xprog_inplace(j->epilogue, scratch, yb + c * plane, plane);
    }
}

#endif

/* The depthwise convolution (group == channels, one input channel per output), included by
   kernels.c after conv_job, store_tile and tile_epilogue. */
#ifndef GRAPHOPT_DEPTHWISE_H
#define GRAPHOPT_DEPTHWISE_H

/* Whole output rows straight from the phase planes: output (oy, ox) reads tap k at
   offs[k] + oy*Wq + ox of its channel's planes, so a vector of 16 columns is 16 contiguous
   loads per tap. Only the Wo real columns are computed (the planes' extra columns never are),
   bias, residual and the activation are applied in registers, and each vector is stored
   straight into y, the row's last one masked. A block of rows x vectors (8 accumulators, or
   fewer at a plane's edge) shares each tap's weight and keeps the FMA units busy however
   narrow the plane.

   A row's masked last vector still loads whole vectors: from padded planes it reads at most
   15 floats past the row, which stay within the channel's planes or, for the last channel,
   their slack (native.py allocates PLANES_SLACK floats more); x read in place (direct) has no
   slack, so there the last vector's loads are masked too. A task is one channel's plane. */
#define DW_CHANNELS 1
#define DW_ACC 8
#define PLANES_SLACK VL

/* tasks per channel (*tiles: one, its whole plane) for P flat positions; rv is unused (kept for
   py_conv's call) */
static inline void depthwise_tiling(int P, int direct, int* rv, int* tiles)
{
    (void)P, (void)direct;
    *rv = 1;
    *tiles = 1;
}

typedef struct {
    const float* xc;  /* the channel's planes (or x) */
    const float* w;   /* its K weights */
    const int* offs;
    const float* res; /* the channel's residual plane, or NULL */
    float* y;         /* its output plane */
    int K, Wq, Wo, tail, direct; /* tail: valid lanes of a row's last vector */
    float bias, lo, hi;
    const xact* act;  /* applied after bias (NULL: the clamp lo, hi after bias and residual) */
} dw_chan;

/* n values acc + bias (t) to y[at ..]: the residual, then the activation or the clamp */
static inline __attribute__((always_inline)) void dw_store(const dw_chan* c, v16 t, long at, int n)
{
    if (c->act) {
        t = xact_apply(c->act, t);
    } else {
        if (c->res) t = t + (n == VL ? *(const v16u*)(c->res + at) : vload_n(c->res + at, n));
        t = vsel(t < c->lo, vsplat(c->lo), t); /* NaN passes, as in store_tile */
        t = vsel(t > c->hi, vsplat(c->hi), t);
    }
    if (n == VL) *(v16u*)(c->y + at) = t;
    else vstore_n(c->y + at, t, n);
}

/* rows oy .. oy+NR-1, vectors v0 .. v0+NV-1 of each; the last of them is the row's last (masked)
   when last is set */
static inline __attribute__((always_inline)) void dw_block(const dw_chan* c, int oy, int v0, int last, const int NR,
                                                           const int NV, const int DIRECT)
{
    v16 acc[DW_ACC]; /* [r * NV + v]: a fixed size and whole unrolling keep them in registers */
#pragma GCC unroll 8
    for (int i = 0; i < NR * NV; i++) acc[i] = (v16){0};
    const long Wq = c->Wq;
    const float* base = c->xc + (long)oy * Wq + v0 * VL;
    const int tail = last ? c->tail : VL;
    for (int k = 0; k < c->K; k++) {
        const v16 wv = vsplat(c->w[k]);
        const float* p = base + c->offs[k];
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) {
                const float* q = p + r * Wq + v * VL;
                acc[r * NV + v] += wv * (DIRECT && v == NV - 1 ? vload_n(q, tail) : *(const v16u*)q);
            }
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            dw_store(c, acc[r * NV + v] + c->bias, (long)(oy + r) * c->Wo + (v0 + v) * VL, v == NV - 1 ? tail : VL);
}

/* Stride S (1 or 2), a KS x KS kernel (3, 5, 7) without dilation: tap (ky, kx) reads phase plane
   (ky % S, kx % S) at row oy + ky / S, column kx / S, so for each phase and column of taps the
   NR + (rows of taps) - 1 plane rows a block of NR output rows needs are loaded once and each
   serves every tap of that column (a quarter of dw_block's loads for 7x7 at stride 1, half for 5x5
   at stride 2). ph: each phase plane's offset. Sums run phase by phase, kx-major (another order
   than dw_block's, within float32 rounding). */
typedef struct {
    int ks, s;    /* 0: not such a window */
    int ph[4];    /* phase (a, b)'s plane at ph[a * s + b] */
} dw_window;

static inline __attribute__((always_inline)) void dw_win_block(const dw_chan* c, const dw_window* win, int oy, int v0,
                                                               int last, const int KS, const int S, const int NR)
{
    v16 acc[DW_ACC];
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++) acc[r] = (v16){0};
    const long Wq = c->Wq;
#pragma GCC unroll 2
    for (int a = 0; a < S; a++)
#pragma GCC unroll 2
        for (int b = 0; b < S; b++) {
            const int rows = (KS - a + S - 1) / S, cols = (KS - b + S - 1) / S;
            const float* base = c->xc + win->ph[a * S + b] + (long)oy * Wq + v0 * VL;
#pragma GCC unroll 1 /* one column of taps at a time: unrolled, GCC hoists the loads and spills */
            for (int cc = 0; cc < cols; cc++) {
                const int kx = b + S * cc;
                v16 in[DW_ACC + 6];
                const float* q = base + cc;
#pragma GCC unroll 14
                for (int i = 0; i < NR + rows - 1; i++, q += Wq) in[i] = *(const v16u*)q; /* one pointer, not 14 offsets */
#pragma GCC unroll 7
                for (int rr = 0; rr < rows; rr++) {
                    const v16 wv = vsplat(c->w[(a + S * rr) * KS + kx]);
#pragma GCC unroll 8
                    for (int r = 0; r < NR; r++) acc[r] += wv * in[r + rr];
                }
            }
        }
    const int n = last ? c->tail : VL;
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++) dw_store(c, acc[r] + c->bias, (long)(oy + r) * c->Wo + v0 * VL, n);
}

static void dw_win(const dw_chan* c, const dw_window* win, int oy, int nr, int v0, int last)
{
#define DW_NR(KS, S)                                                                                         \
    switch (nr) {                                                                                            \
    case 1: dw_win_block(c, win, oy, v0, last, KS, S, 1); return;                                            \
    case 2: dw_win_block(c, win, oy, v0, last, KS, S, 2); return;                                            \
    case 3: dw_win_block(c, win, oy, v0, last, KS, S, 3); return;                                            \
    case 4: dw_win_block(c, win, oy, v0, last, KS, S, 4); return;                                            \
    case 5: dw_win_block(c, win, oy, v0, last, KS, S, 5); return;                                            \
    case 6: dw_win_block(c, win, oy, v0, last, KS, S, 6); return;                                            \
    case 7: dw_win_block(c, win, oy, v0, last, KS, S, 7); return;                                            \
    case 8: dw_win_block(c, win, oy, v0, last, KS, S, 8); return;                                            \
    }                                                                                                        \
    break;
    switch (win->ks * 4 + win->s) {
    case 3 * 4 + 1: DW_NR(3, 1)
    case 5 * 4 + 1: DW_NR(5, 1)
    case 7 * 4 + 1: DW_NR(7, 1)
    case 3 * 4 + 2: DW_NR(3, 2)
    case 5 * 4 + 2: DW_NR(5, 2)
    case 7 * 4 + 2: DW_NR(7, 2)
    }
#undef DW_NR
    if (nr > DW_ACC) /* a block taller than the table (never planned): in parts */
        for (int r = 0; r < nr; r += DW_ACC) dw_win(c, win, oy + r, nr - r < DW_ACC ? nr - r : DW_ACC, v0, last);
}

/* the window the taps are (dw_window), or ks 0 */
static dw_window dw_window_of(const long long* g, const int* offs)
{
    dw_window w = {0, 0, {0}};
    const int K = g[G_K], Wq = g[G_WQ];
    const int ks = K == 9 ? 3 : K == 25 ? 5 : K == 49 ? 7 : 0;
    if (!ks || g[G_DIRECT]) return w;
    for (int s = 1; s <= 2; s++) {
        int ok = 1;
        for (int a = 0; a < s; a++)
            for (int b = 0; b < s; b++) w.ph[a * s + b] = offs[a * ks + b];
        for (int k = 0; k < K && ok; k++) {
            int ky = k / ks, kx = k % ks;
            ok = offs[k] == w.ph[ky % s * s + kx % s] + ky / s * Wq + kx / s;
        }
        if (ok && Wq >= (ks + s - 1) / s) {
            w.ks = ks, w.s = s;
            return w;
        }
    }
    w.ks = 0;
    return w;
}

/* one block of nr rows x nv vectors at (oy, v0), nr * nv <= DW_ACC */
static void dw_rows(const dw_chan* c, int oy, int nr, int v0, int nv, int last)
{
#define DW_CASE(R, V)                                                    \
    case R * 16 + V:                                                     \
        if (c->direct) dw_block(c, oy, v0, last, R, V, 1);               \
        else dw_block(c, oy, v0, last, R, V, 0);                         \
        return;
    switch (nr * 16 + nv) {
    DW_CASE(1, 1) DW_CASE(2, 1) DW_CASE(3, 1) DW_CASE(4, 1) DW_CASE(5, 1) DW_CASE(6, 1) DW_CASE(7, 1) DW_CASE(8, 1)
    DW_CASE(1, 2) DW_CASE(2, 2) DW_CASE(3, 2) DW_CASE(4, 2) DW_CASE(1, 3) DW_CASE(2, 3) DW_CASE(1, 4) DW_CASE(2, 4)
    DW_CASE(1, 5) DW_CASE(1, 6) DW_CASE(1, 7) DW_CASE(1, 8)
    }
#undef DW_CASE
    if (nr > 1) /* a shape outside the table (never planned): row by row */
        for (int r = 0; r < nr; r++) dw_rows(c, oy + r, 1, v0, nv, last);
}

#if defined(__AVX512F__)
/* A small plane (Wo well under a vector) as flat positions p = oy*Wq + ox, as the planes lay them
   out: NV vectors cover all Ho*Wq of them (fewer than Ho rows of one vector each), and each is
   compressed to its real columns, which are consecutive in y (at[i] on). keep[i]: vector i's lanes
   with ox < Wo and p < Ho*Wq. The last vector reads past the plane by less than a vector, as a
   row's last one does. */
static inline __attribute__((always_inline)) void dw_flat_block(const dw_chan* c, const uint16_t* keep,
                                                                const int* at, const int NV)
{
    v16 acc[DW_ACC];
#pragma GCC unroll 8
    for (int i = 0; i < NV; i++) acc[i] = (v16){0};
    for (int k = 0; k < c->K; k++) {
        const v16 wv = vsplat(c->w[k]);
        const float* p = c->xc + c->offs[k];
#pragma GCC unroll 8
        for (int i = 0; i < NV; i++) acc[i] += wv * *(const v16u*)(p + i * VL);
    }
#pragma GCC unroll 8
    for (int i = 0; i < NV; i++) {
        v16 t = (v16)_mm512_maskz_compress_ps(keep[i], (__m512)(acc[i] + c->bias));
        dw_store(c, t, at[i], __builtin_popcount(keep[i]));
    }
}

static void dw_flat(const dw_chan* c, const uint16_t* keep, const int* at, int nv)
{
#define DW_CASE(V) case V: dw_flat_block(c, keep, at, V); return;
    switch (nv) { DW_CASE(1) DW_CASE(2) DW_CASE(3) DW_CASE(4) DW_CASE(5) DW_CASE(6) DW_CASE(7) DW_CASE(8) }
#undef DW_CASE
}
#endif

/* rows in the next block of at most `most`, `left` rows to go: all of them when they fit, else two
   halves when they fit in two, else `most` */
static inline int dw_next_rows(int left, int most)
{
    return left <= most ? left : (left + 1) / 2 <= most ? (left + 1) / 2 : most;
}

/* rows [y0, y1) of one channel's plane; win: dw_window_of */
static void dw_rows_range(const dw_chan* c, int y0, int y1, const dw_window* win)
{
    const int nxv = (c->Wo + VL - 1) / VL;
    if (win->ks) { /* one column of vectors at a time, blocks of up to DW_ACC rows */
        for (int v = 0; v < nxv; v++)
            for (int oy = y0; oy < y1;) {
                int nr = dw_next_rows(y1 - oy, DW_ACC);
                dw_win(c, win, oy, nr, v, v == nxv - 1);
                oy += nr;
            }
        return;
    }
    if (nxv > 4) { /* wide rows: one row at a time, DW_ACC vectors at once */
        for (int oy = y0; oy < y1; oy++)
            for (int v0 = 0; v0 < nxv; v0 += DW_ACC) {
                int nv = nxv - v0 < DW_ACC ? nxv - v0 : DW_ACC;
                dw_rows(c, oy, 1, v0, nv, v0 + nv == nxv);
            }
        return;
    }
    const int most = DW_ACC / nxv; /* rows a block: the rest in one block when it fits */
    for (int oy = y0; oy < y1;) {
        int nr = dw_next_rows(y1 - oy, most);
        dw_rows(c, oy, nr, 0, nxv, 1);
        oy += nr;
    }
}

/* A 3x3 window at stride 2 with one column of left padding (MobileNet's and EfficientNet's
   downsampling depthwise convs), read straight from the channel's input plane, no phase planes:
   16 outputs of a row take 32 input columns in two loads, split by two shuffles into the even
   columns (tap kx = 1) and the odd ones (kx = 2); kx = 0 is the odd ones one lane to the right,
   the column left of the chunk in lane 0 (the padding's 0 for the first). Rows outside the plane
   are skipped, columns past its right edge load as 0 (masked). Four chunks of a row at a time,
   so that four sums are in flight. Filling the four phase planes first took half the time. A 5x5
   window the same way (taps a lane right and left of the even and odd columns) measured 1.5-2x
   slower than dw_win over phase planes, which shares each loaded row among a block of output rows. */
#define DW_S2_CHUNKS 4

static inline __attribute__((always_inline)) void dw_s2x3_taps(const float* r, long W, long s, v16* sh, v16* ev,
                                                               v16* od)
{
    static const v16i evens = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    static const v16i odds = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    static const v16i right1 = {15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30};
    const long avail = W - s; /* >= 1 */
    const v16 a = avail >= VL ? *(const v16u*)(r + s) : vload_n(r + s, (int)avail);
    const v16 b = avail >= 2 * VL ? *(const v16u*)(r + s + VL) : avail > VL ? vload_n(r + s + VL, (int)(avail - VL))
                                                                            : (v16){0};
    *ev = __builtin_shuffle(a, b, evens);
    *od = __builtin_shuffle(a, b, odds);
    *sh = __builtin_shuffle(vsplat(s > 0 ? r[s - 1] : 0.0f), *od, right1);
}

static void dw_s2x3(const dw_chan* c, const float* x, long H, long W, int Ho, int pt)
{
    const float* w = c->w;
    const int Wo = c->Wo;
    for (int oy = 0; oy < Ho; oy++) {
        for (int ox0 = 0; ox0 < Wo; ox0 += DW_S2_CHUNKS * VL) {
            v16 acc[DW_S2_CHUNKS];
#pragma GCC unroll 4
            for (int v = 0; v < DW_S2_CHUNKS; v++) acc[v] = (v16){0};
            for (int ky = 0; ky < 3; ky++) {
                const long iy = 2L * oy - pt + ky;
                if (iy < 0 || iy >= H) continue;
                const float* r = x + iy * W;
                const v16 w0 = vsplat(w[ky * 3]), w1 = vsplat(w[ky * 3 + 1]), w2 = vsplat(w[ky * 3 + 2]);
#pragma GCC unroll 4
                for (int v = 0; v < DW_S2_CHUNKS; v++) {
                    const int o = ox0 + v * VL;
                    if (o >= Wo) break;
                    v16 sh, ev, od;
                    dw_s2x3_taps(r, W, 2L * o, &sh, &ev, &od);
                    acc[v] += w0 * sh;
                    acc[v] += w1 * ev;
                    acc[v] += w2 * od;
                }
            }
#pragma GCC unroll 4
            for (int v = 0; v < DW_S2_CHUNKS; v++) {
                const int o = ox0 + v * VL;
                if (o >= Wo) break;
                dw_store(c, acc[v] + c->bias, (long)oy * Wo + o, Wo - o < VL ? Wo - o : VL);
            }
        }
    }
}

/* The depthwise conv's tasks (conv_tasks hands them over): task t is output channel t % channels of
   image t / channels; the first of each input channel's M outputs (a leader) does all M, the others
   nothing. A run of tasks fills each input channel's phase planes just before reading them, into
   one channel's span of the planes it alone uses (its first leader's: runs are disjoint, so are
   their first leaders), so the planes stay in cache and are never written for the whole tensor.
   scratch is the epilogue program's (NULL without one), lo/hi the clamp. */
static void depthwise_tasks(const conv_job* j, long begin, long end, float* scratch, float lo, float hi)
{
    const long long* g = j->g;
    const int G = g[G_G], M = g[G_M], Ho = g[G_HO], Wo = g[G_WO];
    const long cs = g[G_CSTRIDE], plane = (long)Ho * Wo, channels = (long)G * M;
    const xact* act = j->epilogue && j->epilogue->act.kind ? &j->epilogue->act : NULL;
    const long first = (begin + M - 1) / M * M; /* the run's first leader */
    float* own = j->planes ? j->planes + first / M * cs : NULL;
    const dw_window win = dw_window_of(g, j->offs);
    int flat = 0;
#if defined(__AVX512F__)
    const int Wq = g[G_WQ], P = Ho * Wq, nflat = (P + VL - 1) / VL;
    uint16_t keep[DW_ACC];
    int at[DW_ACC];
    /* fewer vectors than by rows; against dw_win's shared loads, a fifth fewer (measured: 7x7 planes
       of 3x3 and 5x5 kernels run faster flat, of 7x7 kernels by rows) */
    const int rowvecs = Ho * ((Wo + VL - 1) / VL);
    flat = own && nflat <= DW_ACC && (win.ks ? 5 * nflat < 4 * rowvecs : nflat < rowvecs);
    for (int i = 0; flat && i < nflat; i++) {
        keep[i] = 0;
        for (int l = 0; l < VL; l++) {
            int p = i * VL + l;
            keep[i] |= (p < P && p % Wq < Wo) << l;
        }
        int p0 = i * VL;
        at[i] = p0 / Wq * Wo + (p0 % Wq < Wo ? p0 % Wq : Wo);
    }
#endif
    /* the kernel's own terms (dwlanes.h's DL_*): a 3x3 stride-2 window with one column of left
       padding reads the input plane itself (dw_s2x3) */
    const long long* e = g + G_HEAD + 9 * g[G_COPIES];
    const int s2x3 = !flat && e[DL_KH] == 3 && e[DL_KW] == 3 && e[DL_SY] == 2 && e[DL_SX] == 2 && e[DL_DY] == 1
                     && e[DL_DX] == 1 && e[DL_PL] == 1 && Wo >= 1 && 2L * (Wo - 1) < g[G_W];
    for (long t = first; t < end; t += M) {
        const long ich = t / M; /* n * G + input channel */
        const float* xc = j->x + ich * cs;
        if (s2x3) {
            xc = j->x + ich * g[G_H] * g[G_W];
        } else if (own) {
            fill_channel(j, ich, own);
            xc = own;
        }
        for (long o = t; o < t + M; o++) {
            const long yo = o * plane; /* o = n * channels + output channel */
            const int oc = o % channels;
            dw_chan c = {xc, j->w + (long)oc * g[G_K], j->offs, j->res ? j->res + yo : NULL, j->y + yo, g[G_K],
                         g[G_WQ], Wo, Wo - (Wo - 1) / VL * VL, g[G_DIRECT], j->bias ? j->bias[oc] : 0.0f, lo, hi, act};
            if (s2x3) dw_s2x3(&c, xc, g[G_H], g[G_W], Ho, (int)e[DL_PT]);
            else
#if defined(__AVX512F__)
            if (flat) dw_flat(&c, keep, at, nflat);
            else
#endif
            dw_rows_range(&c, 0, Ho, &win);
            if (j->epilogue && !act) /* another program: over the plane just stored, still in cache */
                xprog_inplace(j->epilogue, scratch, c.y, plane);
        }
    }
}

#endif

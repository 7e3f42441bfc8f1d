/* graphopt's native CPU kernels (float32): the CPython extension _graphopt_native, which
   plugins/cpu/native.py builds once per machine and interpreter with the host C compiler
   (-O3 -march=native) and keeps in graphopt's build cache. GCC's generic vectors (16
   floats: one AVX-512 register, two AVX2 ones) keep the source portable. The arrays come
   in through the buffer protocol; the work runs without the GIL on a small pthread pool
   (pool.h; not OpenMP, whose process-wide wait policy the CUDA emulation sets for its
   own 1024-thread teams). Every kernel is checked against the NumPy registry kernels in
   tests/plugins/cpu/test_native.py.

   Convolution works on "flat" planes: the zero-padded input of each channel, split into
   stride x stride phase planes (space-to-depth, so a strided tap is a plain offset), laid
   out as rows of Wq values. The output is computed at every flat position p = oy*Wq + ox
   of the phase grid (a few columns past Wo are computed and dropped), so each kernel tap
   is one constant offset offs[k] from p and a tile is a run of contiguous vector loads.
   The last tile of a plane is shifted back to end at P instead of running past it: it
   recomputes a few outputs (to the same bits) and never reads or writes out of bounds. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#include "pool.h"

#define VL 16
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

#include "exprvm.h"
#include "blas.h"
#include "pooling.h"
#include "reduce.h"

#define MAX_TILE (16 * 6 * VL)

/* clamp((v + b) + r[i..i+16), lo, hi) with r optional: the scalar store loops' order, 16 at a
   time (NaN passes the clamp, as NumPy's maximum) */
static inline v16 add_clamp(v16 v, v16 b, const float* r, long i, v16 lo, v16 hi)
{
    v = v + b;
    if (r) v = v + *(const v16u*)(r + i);
    v = vsel(v < lo, lo, v);
    return vsel(v > hi, hi, v);
}

/* y[m][oy*Wo + ox] = clamp(t[m][p - p0] + bias[m] + res[m][oy*Wo + ox], lo, hi) for the flat
   positions p of [p0, p0 + n) whose column ox < Wo (t's rows are B apart, n <= B). NaN passes the
   clamp (as NumPy's maximum). */
static void store_tile(const float* restrict t, int mrows, int B, int n, int p0, int Wq, int Wo, const float* bias,
                       const float* res, long plane, float lo, float hi, float* y)
{
    /* the tile's runs of stored columns, the same for every row: found once (a division per run) */
    int src0[n + 1], dst0[n + 1], len[n + 1], runs = 0;
    for (int p = p0, end = p0 + n; p < end;) {
        int oy = p / Wq, ox = p - oy * Wq;
        int run = Wq - ox < end - p ? Wq - ox : end - p;
        int valid = ox < Wo ? (Wo - ox < run ? Wo - ox : run) : 0;
        if (valid > 0) src0[runs] = p - p0, dst0[runs] = oy * Wo + ox, len[runs++] = valid;
        p += run;
    }
    for (int m = 0; m < mrows; m++) {
        const float* tm = t + m * B;
        float b = bias ? bias[m] : 0.0f;
        const v16 vb = vsplat(b), vlo = vsplat(lo), vhi = vsplat(hi);
        const float* rm = res ? res + m * plane : NULL;
        float* ym = y + m * plane;
        for (int k = 0; k < runs; k++) {
            const float* src = tm + src0[k];
            float* dst = ym + dst0[k];
            const float* rr = rm ? rm + dst0[k] : NULL;
            int i = 0, valid = len[k];
            for (; i + VL <= valid; i += VL) *(v16u*)(dst + i) = add_clamp(*(const v16u*)(src + i), vb, rr, i, vlo, vhi);
            for (; i < valid; i++) {
                float v = src[i] + b;
                if (rr) v = v + rr[i];
                v = v < lo ? lo : v;
                dst[i] = v > hi ? hi : v;
            }
        }
    }
}

#define MT 16
#define RV 1
#include "conv_tile.h"
#undef MT
#undef RV
#define MT 8
#define RV 3
#include "conv_tile.h"
#undef MT
#undef RV
#define MT 4
#define RV 6
#include "conv_tile.h"
#undef MT
#undef RV
#define MT 12
#define RV 2
#include "conv_tile.h"
#undef MT
#undef RV


typedef void (*tile_fn)(const float*, int, long, const float*, int, const int*, int, float*);
#define DW_LANES 2 /* conv_job.depthwise of the channels-in-lanes kernel, variant -2 */
static const struct { int mt, rv; tile_fn fn; } VARIANTS[] = {
    {16, 1, conv_tile_16_1}, {8, 3, conv_tile_8_3}, {4, 6, conv_tile_4_6}, {12, 2, conv_tile_12_2},
};
#define N_VARIANTS (int)(sizeof VARIANTS / sizeof VARIANTS[0])

/* The geometry of one conv on one input shape, as native.py's _Plan writes it (int64):
   N, G, C (input channels per group), H, W, cstride (floats between phase-plane sets of two
   channels), M (outputs per group), K (taps), P (flat positions per plane), Wq, Ho, Wo,
   direct (1: x is read in place, no planes), copies, then per copy: plane offset, plane
   rows r0 r1, plane columns q0 q1, first x row and column, row and column step. */
enum { G_N, G_G, G_C, G_H, G_W, G_CSTRIDE, G_M, G_K, G_P, G_WQ, G_HO, G_WO, G_DIRECT, G_COPIES, G_HEAD };
/* the geometry's tail after the copies: kernel rows and columns, strides, dilations, top and left
   pads (the depthwise kernels read them: depthwise.h's dw_s2x3, dwlanes.h) */
enum { DL_KH, DL_KW, DL_SY, DL_SX, DL_DY, DL_DX, DL_PT, DL_PL, DL_LEN };

typedef struct {
    const long long* g;
    const float* x;
    float* planes;
    const float* w;
    const int* offs;
    const float* bias;
    const float* res;
    float* y;
    float lo, hi;
    int variant, depthwise; /* depthwise: 1 by rows (depthwise.h), DW_LANES channels in lanes (dwlanes.h) */
    const xprog* epilogue; /* a program over acc alone, applied to each tile before it is stored, or NULL */
} conv_job;

/* acc + bias, then the epilogue program, over a tile of rows x B values (in place); the tile is
   then stored as is (no bias, no clamp) */
static void tile_epilogue(const conv_job* j, float* t, int rows, int B, const float* bias, float* scratch)
{
    xprog_rows_inplace(j->epilogue, scratch, t, rows, B, bias);
}

/* the phase planes of input channel ch (over all images) written at pc, a channel's span of the
   planes: only the interior, the zero borders stay as they were first zeroed */
static void fill_channel(const conv_job* j, long ch, float* pc)
{
    const long long* g = j->g;
    const long H = g[G_H], W = g[G_W], wq = g[G_WQ];
    const float* xc = j->x + ch * H * W;
    for (long k = 0; k < g[G_COPIES]; k++) {
        const long long* d = g + G_HEAD + 9 * k;
        const long off = d[0], r0 = d[1], r1 = d[2], q0 = d[3], q1 = d[4], xr = d[5], xq = d[6], sy = d[7], sx = d[8];
        for (long r = r0; r < r1; r++)
            vcopy_strided(pc + off + r * wq + q0, xc + (xr + (r - r0) * sy) * W + xq, q1 - q0, sx);
    }
}

static void fill_planes(void* ctx, long begin, long end)
{
    const conv_job* j = ctx;
    if (j->depthwise) return; /* its tasks fill each channel's planes right before reading them (depthwise.h) */
    for (long ch = begin; ch < end; ch++) fill_channel(j, ch, j->planes + ch * j->g[G_CSTRIDE]);
}

/* A task's epilogue state: the program's scratch on the task's stack (a VLA lives in the
   caller's frame, hence a macro; py_conv bounds it by CONV_EPILOGUE_SCRATCH) with its constants
   filled, and the clamp [lo, hi], which a program replaces. */
#define TASK_EPILOGUE(j, scratch, lo, hi)                                     \
    float scratch##_store[(j)->epilogue ? xprog_scratch((j)->epilogue) : 1]; \
    float* scratch = NULL;                                                    \
    float lo = (j)->lo, hi = (j)->hi;                                         \
    if ((j)->epilogue) {                                                      \
        scratch = scratch##_store;                                            \
        xprog_fill_consts((j)->epilogue, scratch);                            \
        lo = -INFINITY, hi = INFINITY;                                        \
    }

#include "depthwise.h"
#include "dwlanes.h"
#include "sgemm.h"
#include "conv_gemm.h"

static void conv_tasks(void* ctx, long begin, long end)
{
    const conv_job* j = ctx;
    const long long* g = j->g;
    const int G = g[G_G], C = g[G_C], M = g[G_M], K = g[G_K], P = g[G_P], Wq = g[G_WQ], Wo = g[G_WO];
    const long cs = g[G_CSTRIDE], plane = g[G_HO] * g[G_WO];
    const float* src = j->planes ? j->planes : j->x;
    TASK_EPILOGUE(j, scratch, lo, hi);
    if (j->depthwise == DW_LANES) {
        dwlanes_tasks(j, begin, end, scratch, lo, hi);
        return;
    }
    if (j->depthwise) {
        depthwise_tasks(j, begin, end, scratch, lo, hi);
        return;
    }
    const int mt = VARIANTS[j->variant].mt, B = VARIANTS[j->variant].rv * VL;
    const tile_fn fn = VARIANTS[j->variant].fn;
    const int mb = (M + mt - 1) / mt, pb = (P + B - 1) / B;
    const long wgroup = (long)mb * C * K * mt;
    for (long task = begin; task < end; task++) {
        float t[MAX_TILE];
        long rest = task;
        int jb = rest % pb; rest /= pb;
        int i = rest % mb; rest /= mb;
        int gi = rest % G, n = rest / G;
        int p0 = jb * B < P - B ? jb * B : P - B;
        int m0 = i * mt, rows = M - m0 < mt ? M - m0 : mt;
        fn(src + ((long)n * G + gi) * C * cs, C, cs, j->w + gi * wgroup + (long)i * C * K * mt, K, j->offs, p0, t);
        long yo = ((long)n * G * M + (long)gi * M + m0) * plane;
        const float* bias = j->bias ? j->bias + gi * M + m0 : NULL;
        if (scratch) {
            tile_epilogue(j, t, rows, B, bias, scratch);
            bias = NULL;
        }
        store_tile(t, rows, B, B, p0, Wq, Wo, bias, j->res ? j->res + yo : NULL, plane, lo, hi, j->y + yo);
    }
}

/* ---- LayerNormalization over the last axis, and attention ---- */

static inline float hsum(v16 v)
{
    float s = 0.0f;
    for (int i = 0; i < VL; i++) s += v[i];
    return s;
}

/* sum of a[i] * b[i] (b == NULL: of a[i]) over n contiguous floats, 16 lanes at a time */
static inline float dot(const float* a, const float* b, long n)
{
    v16 acc = {0};
    long i = 0;
    for (; i + VL <= n; i += VL) {
        v16 x = *(const v16u*)(a + i);
        acc += b ? x * *(const v16u*)(b + i) : x;
    }
    float s = hsum(acc);
    for (; i < n; i++) s += b ? a[i] * b[i] : a[i];
    return s;
}

typedef struct { const float *x, *scale, *bias; float* y; long n; float eps; } ln_job;

static void ln_rows(void* ctx, long begin, long end)
{
    const ln_job* j = ctx;
    const long n = j->n;
    for (long r = begin; r < end; r++) {
        const float* x = j->x + r * n;
        float* y = j->y + r * n;
        float mean = dot(x, NULL, n) / (float)n;
        for (long i = 0; i < n; i++) y[i] = x[i] - mean;
        float inv = 1.0f / sqrtf(dot(y, y, n) / (float)n + j->eps);
        if (j->bias)
            for (long i = 0; i < n; i++) y[i] = y[i] * inv * j->scale[i] + j->bias[i];
        else
            for (long i = 0; i < n; i++) y[i] = y[i] * inv * j->scale[i];
    }
}

/* q, kt, v, mask, out: 4-D views given by their element strides: q (B, H, Sq, D), kt = K
   transposed (B, H, D, Sk), v (B, H, Sk, Dv), mask (B, H, Sq, Sk; stride 0 on broadcast axes),
   out (B, H, Sq, Dv); the last axis of q, kt, v and out contiguous. */
typedef struct {
    const float *q, *kt, *v, *mask;
    float* o;
    long qs[4], ks[4], vs[4], ms[4], os[4];
    long B, H, Sq, Sk, D, Dv;
    float scale;
} attn_job;

#define ATT_R 6 /* query rows per task: each loaded vector of K^T or V serves all six (24 accumulators) */

/* s[r][t0 .. t0 + 16 NV) = q[r] . K^T[:, t0 ..] for ATT_R rows, NV vectors of keys at once */
static inline __attribute__((always_inline)) void attn_scores(const float* const* q, const float* kt, long ktd,
                                                              long D, long t0, float* const* s, const int NV)
{
    v16 acc[ATT_R][4];
    for (int r = 0; r < ATT_R; r++)
        for (int k = 0; k < NV; k++) acc[r][k] = (v16){0};
    for (long d = 0; d < D; d++) {
        const float* kd = kt + d * ktd + t0;
        v16 kv[4];
        for (int k = 0; k < NV; k++) kv[k] = *(const v16u*)(kd + k * VL);
        for (int r = 0; r < ATT_R; r++) {
            v16 qv = vsplat(q[r][d]);
            for (int k = 0; k < NV; k++) acc[r][k] += qv * kv[k];
        }
    }
    for (int r = 0; r < ATT_R; r++)
        for (int k = 0; k < NV; k++) *(v16u*)(s[r] + t0 + k * VL) = acc[r][k];
}

/* o[r][0 .. 16 NV) = sum over t of p[r][t] v[t][d0 ..] */
static inline __attribute__((always_inline)) void attn_values(float* const* p, const float* v, long vt, long Sk,
                                                              long d0, float* const* o, const int NV)
{
    v16 acc[ATT_R][4];
    for (int r = 0; r < ATT_R; r++)
        for (int k = 0; k < NV; k++) acc[r][k] = (v16){0};
    for (long t = 0; t < Sk; t++) {
        const float* vr = v + t * vt + d0;
        v16 vv[4];
        for (int k = 0; k < NV; k++) vv[k] = *(const v16u*)(vr + k * VL);
        for (int r = 0; r < ATT_R; r++) {
            v16 pv = vsplat(p[r][t]);
            for (int k = 0; k < NV; k++) acc[r][k] += pv * vv[k];
        }
    }
    for (int r = 0; r < ATT_R; r++)
        for (int k = 0; k < NV; k++) *(v16u*)(o[r] + k * VL) = acc[r][k];
}

/* scale, mask, softmax of one score row in place (as ops/norm.py's softmax: exp(s - max) / sum) */
static void attn_softmax(float* s, long Sk, const float* m, long ms, float scale)
{
    float mx = -INFINITY;
    long t = 0;
    if (!m || ms == 1) { /* the loop below, 16 at a time (a NaN sticks in its lane, then in mx) */
        const v16 vs = vsplat(scale);
        v16 vm = vsplat(-INFINITY);
        for (; t + VL <= Sk; t += VL) {
            v16 x = *(v16u*)(s + t) * vs;
            if (m) x = x + *(const v16u*)(m + t);
            *(v16u*)(s + t) = x;
            vm = vmax(x, vm);
        }
        for (int l = 0; l < VL; l++) mx = vm[l] > mx || vm[l] != vm[l] ? vm[l] : mx;
    }
    for (; t < Sk; t++) {
        float x = s[t] * scale;
        if (m) x += m[t * ms];
        s[t] = x;
        mx = x > mx || x != x ? x : mx;
    }
    t = 0;
    v16 sum = {0};
    for (; t + VL <= Sk; t += VL) {
        v16 e = v_exp(*(v16u*)(s + t) - mx);
        *(v16u*)(s + t) = e;
        sum += e;
    }
    float total = hsum(sum);
    for (; t < Sk; t++) {
        s[t] = expf(s[t] - mx);
        total += s[t];
    }
    const v16 vt = vsplat(total);
    for (t = 0; t + VL <= Sk; t += VL) *(v16u*)(s + t) = *(v16u*)(s + t) / vt; /* a true division, as NumPy's */
    for (; t < Sk; t++) s[t] /= total;
}

static void attn_rows(void* ctx, long begin, long end)
{
    const attn_job* j = ctx;
    const long Sk = j->Sk, D = j->D, Dv = j->Dv, blocks = (j->Sq + ATT_R - 1) / ATT_R;
    const long skp = (Sk + VL - 1) / VL * VL; /* a score row padded to whole vectors */
    float stack[ATT_R * 1024 + 64 * VL];
    const long need = ATT_R * skp + D * VL; /* the score rows, then the last keys' padded columns */
    float* buf = need <= ATT_R * 1024 + 64 * VL ? stack : malloc(sizeof(float) * need);
    if (!buf) return;
    for (long task = begin; task < end; task++) {
        long bh = task / blocks, i0 = task % blocks * ATT_R, h = bh % j->H, b = bh / j->H;
        int rows = j->Sq - i0 < ATT_R ? (int)(j->Sq - i0) : ATT_R;
        const float* q[ATT_R];
        float *s[ATT_R], *o[ATT_R], odrop[4 * VL];
        for (int r = 0; r < ATT_R; r++) { /* missing rows repeat the last one; their results are dropped */
            long i = i0 + (r < rows ? r : rows - 1);
            q[r] = j->q + b * j->qs[0] + h * j->qs[1] + i * j->qs[2];
            s[r] = buf + r * skp;
            o[r] = j->o + b * j->os[0] + h * j->os[1] + i * j->os[2];
        }
        const float* kt = j->kt + b * j->ks[0] + h * j->ks[1];
        const float* v = j->v + b * j->vs[0] + h * j->vs[1];
        long t0 = 0;
        for (; t0 + 4 * VL <= Sk; t0 += 4 * VL) attn_scores(q, kt, j->ks[2], D, t0, s, 4);
        for (; t0 + VL <= Sk; t0 += VL) attn_scores(q, kt, j->ks[2], D, t0, s, 1);
        if (t0 < Sk) { /* the last keys, fewer than a vector: from a zero-padded copy of their columns */
            float* tail = buf + ATT_R * skp; /* D x VL floats past the score rows */
            for (long d = 0; d < D; d++)
                for (long c = 0; c < VL; c++) tail[d * VL + c] = t0 + c < Sk ? kt[d * j->ks[2] + t0 + c] : 0.0f;
            float* st[ATT_R];
            for (int r = 0; r < ATT_R; r++) st[r] = s[r] + t0; /* within the row's padding to skp */
            attn_scores(q, tail, VL, D, 0, st, 1);
        }
        for (int r = 0; r < rows; r++) {
            const float* m = j->mask ? j->mask + b * j->ms[0] + h * j->ms[1] + (i0 + r) * j->ms[2] : NULL;
            attn_softmax(s[r], Sk, m, j->ms[3], j->scale);
        }
        for (int r = rows; r < ATT_R; r++) s[r] = s[rows - 1];
        long d0 = 0;
        float* od[ATT_R]; /* rows past the last are written to a scratch row */
        for (; d0 + 4 * VL <= Dv; d0 += 4 * VL) {
            for (int r = 0; r < ATT_R; r++) od[r] = r < rows ? o[r] + d0 : odrop;
            attn_values(s, v, j->vs[2], Sk, d0, od, 4);
        }
        for (; d0 + VL <= Dv; d0 += VL) {
            for (int r = 0; r < ATT_R; r++) od[r] = r < rows ? o[r] + d0 : odrop;
            attn_values(s, v, j->vs[2], Sk, d0, od, 1);
        }
        for (; d0 < Dv; d0++)
            for (int r = 0; r < rows; r++) {
                float x = 0.0f;
                for (long t = 0; t < Sk; t++) x += s[r][t] * v[t * j->vs[2] + d0];
                o[r][d0] = x;
            }
    }
    if (buf != stack) free(buf);
}

/* below this many multiply-adds a job runs on the caller alone: waking a worker costs more */
#define PARALLEL_WORK 32768

/* ---- the Python face ---- */

typedef struct { Py_buffer view; int held; } buf;

static int take(PyObject* o, buf* b, int writable, const char* what)
{
    b->held = 0;
    if (o == Py_None) return 0;
    if (PyObject_GetBuffer(o, &b->view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Format(PyExc_ValueError, "native conv: %s is not a C-contiguous%s buffer", what,
                     writable ? " writable" : "");
        return -1;
    }
    b->held = 1;
    return 0;
}

static void give(buf* b) { if (b->held) PyBuffer_Release(&b->view); }

static void* ptr(buf* b) { return b->held ? b->view.buf : NULL; }

#define CONV_EPILOGUE_SCRATCH 8192 /* floats: the epilogue's blocks live on the task's stack */

/* a program buffer (None: no program) parsed into x; 1 when there is one, 0 when None, -1 on error */
static int take_prog(PyObject* o, buf* b, xprog* x, const char* who)
{
    if (take(o, b, 0, "program") < 0) return -1;
    if (!b->held) return 0;
    if (b->view.len % 4 || xprog_parse(b->view.buf, b->view.len / 4, x) < 0) {
        give(b);
        PyErr_Format(PyExc_ValueError, "%s: malformed expression program", who);
        return -1;
    }
    return 1;
}

/* conv(variant, geometry, x, planes, w, offs, bias, res, y, lo, hi, epilogue, col); variant -1 =
   depthwise, N_VARIANTS = the GEMM route (conv_gemm.h; w is packed by pack_a, col its scratch columns,
   None when direct); epilogue: a program over acc alone (None: the clamp lo, hi) */
static PyObject* py_conv(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "conv takes 13 arguments");
        return NULL;
    }
    int variant = (int)PyLong_AsLong(args[0]);
    double lo = PyFloat_AsDouble(args[9]), hi = PyFloat_AsDouble(args[10]);
    if (PyErr_Occurred()) return NULL;
    const int gemm = variant == N_VARIANTS; /* conv_gemm.h: columns and one sgemm per group */
    const int lanes = variant == -2;        /* dwlanes.h: a depthwise conv, 16 channels in the lanes */
    if (variant < -2 || variant > N_VARIANTS) {
        PyErr_SetString(PyExc_ValueError, "native conv: no such variant");
        return NULL;
    }
    buf pb;
    xprog prog;
    int has_prog = take_prog(args[11], &pb, &prog, "native conv");
    if (has_prog < 0) return NULL;
    if (has_prog && (prog.n_in != 1 || prog.n_out != 1 || prog.in_kind[0] || prog.out_kind[0]
                     || xprog_scratch(&prog) > CONV_EPILOGUE_SCRATCH)) {
        give(&pb);
        PyErr_SetString(PyExc_ValueError, "native conv: the epilogue program must map acc alone to one float32 value");
        return NULL;
    }
    buf b[9];
    static const char* names[9] = {"geometry", "x", "planes", "w", "offs", "bias", "res", "y", "col"};
    int n_taken = 0, ok = 1;
    for (; n_taken < 9; n_taken++)
        if (take(args[1 + n_taken < 9 ? 1 + n_taken : 12], &b[n_taken], n_taken == 2 || n_taken >= 7,
                 names[n_taken]) < 0) { ok = 0; break; }
    if (ok) {
        conv_job j = {ptr(&b[0]), ptr(&b[1]), ptr(&b[2]), ptr(&b[3]), ptr(&b[4]), ptr(&b[5]), ptr(&b[6]), ptr(&b[7]),
                      (float)lo, (float)hi, variant < 0 || gemm ? 0 : variant, lanes ? DW_LANES : variant < 0,
                      has_prog ? &prog : NULL};
        const long long* g = j.g;
        int P = g[G_P];
        int need = variant < 0 || gemm ? VL : VARIANTS[variant].rv * VL;
        long planes_need = g ? (g[G_N] * g[G_G] * g[G_C] * g[G_CSTRIDE] + PLANES_SLACK) * 4 : 0;
        long plane = g ? g[G_HO] * g[G_WO] : 0;
        long col_need = g ? g[G_N] * g[G_G] * g[G_C] * g[G_K] * plane * 4 : 0;
        long lanes_w = g ? g[G_K] * ((g[G_G] * g[G_M] + VL - 1) / VL * VL) * 4 : 0; /* [K][channels, padded] */
        if (!j.g || !j.x || !j.w || !j.offs || !j.y || !lanes && (variant >= 0 && !gemm || g[G_DIRECT]) && P < need
            || (lanes && (g[G_M] != 1 || g[G_C] != 1 || b[3].view.len != lanes_w
                          || b[0].view.len < (G_HEAD + 9 * g[G_COPIES] + DL_LEN) * 8))
            || (!lanes && !g[G_DIRECT] && (!j.planes || b[2].view.len < planes_need))
            || (gemm && !g[G_DIRECT] && (!ptr(&b[8]) || b[8].view.len < col_need))
            || (gemm && b[3].view.len != g[G_G] * ((g[G_M] + SG_MR - 1) / SG_MR * SG_MR) * g[G_C] * g[G_K] * 4)
            || b[1].view.len < g[G_N] * g[G_G] * g[G_C] * g[G_H] * g[G_W] * 4
            || b[7].view.len != g[G_N] * g[G_G] * g[G_M] * g[G_HO] * g[G_WO] * 4) {
            PyErr_SetString(PyExc_ValueError, "native conv: geometry does not fit the kernel");
            ok = 0;
        } else if (gemm) {
            cgemm_job q = {&j, g[G_DIRECT] ? NULL : ptr(&b[8]), plane, 0, 0};
            long tasks = cgemm_plan(&q, pool_size());
            Py_BEGIN_ALLOW_THREADS
            if (!g[G_DIRECT]) {
                parallel_for(fill_planes, &j, g[G_N] * g[G_G] * g[G_C]);
                parallel_for(im2col_tasks, &q, g[G_N] * g[G_G] * g[G_C]);
            }
            parallel_for(cgemm_tasks, &q, tasks);
            Py_END_ALLOW_THREADS
        } else {
            long tasks;
            if (lanes) {
                tasks = g[G_N] * ((g[G_G] + VL - 1) / VL);
            } else if (variant < 0) {
                int rv, pb;
                depthwise_tiling(P, g[G_DIRECT], &rv, &pb);
                tasks = g[G_N] * ((g[G_G] * g[G_M] + DW_CHANNELS - 1) / DW_CHANNELS) * pb;
            } else {
                int mt = VARIANTS[variant].mt, B = VARIANTS[variant].rv * VL;
                tasks = g[G_N] * g[G_G] * ((g[G_M] + mt - 1) / mt) * ((P + B - 1) / B);
            }
            Py_BEGIN_ALLOW_THREADS
            if (!g[G_DIRECT] && !lanes) parallel_for(fill_planes, &j, g[G_N] * g[G_G] * g[G_C]);
            parallel_for(conv_tasks, &j, tasks);
            Py_END_ALLOW_THREADS
        }
    }
    for (int i = 0; i < n_taken; i++) give(&b[i]);
    if (has_prog) give(&pb);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* ---- expression programs over arrays (exprvm.h) ----
   The output is C-contiguous, seen as rows of L values; row r's multi-index over the outer
   sizes gives each input's offset (its strides, 0 on broadcast axes), and within a row an
   input steps by 1 or 0. The geometry (int64): D, L, rows, the D outer sizes, then per input
   its step and its D strides (elements). */
enum { XG_D, XG_L, XG_ROWS, XG_HEAD };
#define XG_MAXD 8
#define XCHUNK (16 * XB) /* values per task */

typedef struct {
    const xprog* p;
    const long long* g;
    const char* const* in;
    char* const* out;
    int in_size[64], out_size[64];
    long chunks; /* per row */
    atomic_int failed;
} expr_job;

static void expr_tasks(void* ctx, long begin, long end)
{
    expr_job* j = ctx;
    const xprog* x = j->p;
    const long long* g = j->g;
    const int D = g[XG_D];
    const long L = g[XG_L];
    float stack[8192];
    long need = xprog_scratch(x);
    float* scratch = need <= 8192 ? stack : malloc(sizeof(float) * need);
    if (!scratch) {
        atomic_store(&j->failed, 1);
        return;
    }
    xprog_fill_consts(x, scratch);
    int step[64];
    const void* in[64];
    void* out[64];
    for (int i = 0; i < x->n_in; i++) step[i] = g[XG_HEAD + D + i * (D + 1)];
    for (long t = begin; t < end; t++) {
        long row = t / j->chunks, c0 = (t % j->chunks) * XCHUNK, c1 = c0 + XCHUNK < L ? c0 + XCHUNK : L;
        long base[64] = {0};
        long rest = row;
        for (int d = D - 1; d >= 0; d--) {
            long size = g[XG_HEAD + d], k = rest % size;
            rest /= size;
            for (int i = 0; i < x->n_in; i++) base[i] += k * g[XG_HEAD + D + i * (D + 1) + 1 + d];
        }
        for (long c = c0; c < c1; c += XB) {
            int m = c1 - c < XB ? (int)(c1 - c) : XB;
            for (int i = 0; i < x->n_in; i++) in[i] = j->in[i] + (base[i] + c * step[i]) * j->in_size[i];
            for (int o = 0; o < x->n_out; o++) out[o] = j->out[o] + (row * L + c) * j->out_size[o];
            xprog_block(x, scratch, m, in, step, out);
        }
    }
    if (scratch != stack) free(scratch);
}

/* expr(program, geometry, inputs, outputs): inputs and outputs are tuples of C-contiguous
   buffers (float32, or bool/uint8 where the program's kinds say so) */
static PyObject* py_expr(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyTuple_Check(args[2]) || !PyTuple_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "expr(program, geometry, inputs tuple, outputs tuple)");
        return NULL;
    }
    buf pb, gb;
    xprog prog;
    if (take_prog(args[0], &pb, &prog, "native expr") <= 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "native expr: no program");
        return NULL;
    }
    if (take(args[1], &gb, 0, "geometry") < 0) {
        give(&pb);
        return NULL;
    }
    const int n_in = (int)PyTuple_GET_SIZE(args[2]), n_out = (int)PyTuple_GET_SIZE(args[3]);
    buf bufs[128];
    int n_taken = 0, ok = 1;
    const long long* g = gb.held ? gb.view.buf : NULL;
    long glen = gb.held ? gb.view.len / 8 : 0;
    if (n_in != prog.n_in || n_out != prog.n_out || glen < XG_HEAD || g[XG_D] < 0 || g[XG_D] > XG_MAXD
        || glen != XG_HEAD + g[XG_D] + n_in * (g[XG_D] + 1) || g[XG_L] < 1 || g[XG_ROWS] < 0) {
        PyErr_SetString(PyExc_ValueError, "native expr: the geometry does not fit the program");
        ok = 0;
    }
    expr_job j = {.p = &prog, .g = g};
    const char* in_ptr[64];
    char* out_ptr[64];
    for (int i = 0; ok && i < n_in + n_out; i++) {
        int is_out = i >= n_in, k = is_out ? i - n_in : i;
        PyObject* o = PyTuple_GET_ITEM(args[is_out ? 3 : 2], k);
        if (take(o, &bufs[i], is_out, is_out ? "output" : "input") < 0) {
            ok = 0;
            break;
        }
        n_taken++;
        int size = (is_out ? prog.out_kind[k] : prog.in_kind[k]) ? 1 : 4;
        long D = g[XG_D], L = g[XG_L], rows = g[XG_ROWS], last;
        if (is_out) {
            last = rows * L;
            out_ptr[k] = ptr(&bufs[i]);
            j.out_size[k] = size;
        } else { /* one past the farthest element the geometry reads */
            const long long* st = g + XG_HEAD + D + k * (D + 1);
            int bad = st[0] != 0 && st[0] != 1;
            last = (L - 1) * st[0] + 1;
            for (int d = 0; d < D; d++) {
                bad |= st[1 + d] < 0 || g[XG_HEAD + d] < 1;
                last += (g[XG_HEAD + d] - 1) * st[1 + d];
            }
            in_ptr[k] = ptr(&bufs[i]);
            j.in_size[k] = size;
            if (rows == 0) last = 0;
            if (bad) last = -1;
        }
        long have = bufs[i].held ? bufs[i].view.len : -1;
        if (last < 0) have = -1;
        if (have < 0 || (is_out ? have != last * size : have < last * size)) {
            PyErr_Format(PyExc_ValueError, "native expr: %s %d does not fit the geometry", is_out ? "output" : "input",
                         k);
            ok = 0;
        }
    }
    if (ok && g[XG_ROWS] > 0) {
        j.in = in_ptr;
        j.out = out_ptr;
        j.chunks = (g[XG_L] + XCHUNK - 1) / XCHUNK;
        atomic_init(&j.failed, 0);
        long tasks = g[XG_ROWS] * j.chunks;
        Py_BEGIN_ALLOW_THREADS
        if (g[XG_ROWS] * g[XG_L] * (prog.n_instr + 1) < 4 * PARALLEL_WORK) expr_tasks(&j, 0, tasks);
        else parallel_for(expr_tasks, &j, tasks);
        Py_END_ALLOW_THREADS
        if (atomic_load(&j.failed)) {
            PyErr_NoMemory();
            ok = 0;
        }
    }
    for (int i = 0; i < n_taken; i++) give(&bufs[i]);
    give(&gb);
    give(&pb);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* blas_bind(path): use the OpenBLAS that NumPy loaded from path; "" or why not */
static PyObject* py_blas_bind(PyObject* self, PyObject* arg)
{
    (void)self;
    const char* path = PyUnicode_AsUTF8(arg);
    if (!path) return NULL;
    void* h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h) return PyUnicode_FromString("NumPy's OpenBLAS is not loaded from that path");
    sgemm64_t g = (sgemm64_t)dlsym(h, "scipy_cblas_sgemm64_");
    if (!g) g = (sgemm64_t)dlsym(h, "cblas_sgemm64_");
    sgemv64_t v = (sgemv64_t)dlsym(h, "scipy_cblas_sgemv64_");
    if (!v) v = (sgemv64_t)dlsym(h, "cblas_sgemv64_");
    int (*local)(int) = (int (*)(int))dlsym(h, "openblas_set_num_threads_local");
    if (!g || !v || !local)
        return PyUnicode_FromString("no ILP64 cblas_sgemm/sgemv or openblas_set_num_threads_local in it");
    blas_sgemv = v;
    blas_sgemm = g;
    blas_threads_local = local;
    return PyUnicode_FromString("");
}

static int matrix(PyObject* o, Py_buffer* v, int writable, long long shape[2], long long* ld, const char* what)
{
    if (PyObject_GetBuffer(o, v, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (v->ndim != 2 || v->itemsize != 4 || !v->format || strcmp(v->format, "f") != 0 || v->strides[1] != 4
        || v->strides[0] % 4 || v->strides[0] < 4 * (v->shape[1] > 1 ? v->shape[1] : 1)) {
        PyBuffer_Release(v);
        PyErr_Format(PyExc_ValueError, "native gemm: %s is not a row-major float32 matrix", what);
        return -1;
    }
    shape[0] = v->shape[0], shape[1] = v->shape[1], *ld = v->strides[0] / 4;
    return 0;
}

/* gemm(a, b, c, ta, tb, alpha, beta): c = alpha op(a) op(b) + beta c (2-D float32, rows contiguous) */
static PyObject* py_gemm(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "gemm(a, b, c, ta, tb, alpha, beta)");
        return NULL;
    }
    if (!blas_sgemm) {
        PyErr_SetString(PyExc_RuntimeError, "native gemm: no BLAS bound (blas_bind)");
        return NULL;
    }
    gemm_job j;
    j.ta = PyObject_IsTrue(args[3]), j.tb = PyObject_IsTrue(args[4]);
    j.alpha = (float)PyFloat_AsDouble(args[5]), j.beta = (float)PyFloat_AsDouble(args[6]);
    if (PyErr_Occurred() || j.ta < 0 || j.tb < 0) return NULL;
    Py_buffer va, vb, vc;
    long long sa[2], sb[2], sc[2];
    if (matrix(args[0], &va, 0, sa, &j.lda, "a") < 0) return NULL;
    if (matrix(args[1], &vb, 0, sb, &j.ldb, "b") < 0) {
        PyBuffer_Release(&va);
        return NULL;
    }
    if (matrix(args[2], &vc, 1, sc, &j.ldc, "c") < 0) {
        PyBuffer_Release(&va);
        PyBuffer_Release(&vb);
        return NULL;
    }
    j.m = j.ta ? sa[1] : sa[0], j.k = j.ta ? sa[0] : sa[1], j.n = j.tb ? sb[0] : sb[1];
    int ok = (j.tb ? sb[1] : sb[0]) == j.k && sc[0] == j.m && sc[1] == j.n;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "native gemm: shapes do not fit");
    } else if (j.m > 0 && j.n > 0) {
        j.a = va.buf, j.b = vb.buf, j.c = vc.buf;
        int threads = pool_size();
        Py_BEGIN_ALLOW_THREADS
        gemm_plan(&j, threads);
        long tasks = j.mblocks * j.nblocks;
        int prev = blas_threads_local(1);
        if (tasks == 1) gemm_tasks(&j, 0, 1);
        else parallel_for(gemm_tasks, &j, tasks);
        blas_threads_local(prev);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    PyBuffer_Release(&vc);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* pack_b(b, packed): b (K x N, rows contiguous) into sgemm.h's panels; packed holds
   ceil(N / SG_NR) * SG_NR * K floats */
static PyObject* py_pack_b(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pack_b(b, packed)");
        return NULL;
    }
    Py_buffer vb;
    long long sb[2], ldb;
    if (matrix(args[0], &vb, 0, sb, &ldb, "b") < 0) return NULL;
    buf pk;
    if (take(args[1], &pk, 1, "packed") < 0) {
        PyBuffer_Release(&vb);
        return NULL;
    }
    long need = (sb[1] + SG_NR - 1) / SG_NR * SG_NR * sb[0] * 4;
    int ok = pk.held && pk.view.len == need;
    if (!ok) PyErr_SetString(PyExc_ValueError, "native pack_b: the packed buffer does not fit b");
    else {
        Py_BEGIN_ALLOW_THREADS
        sg_pack_b(vb.buf, ldb, sb[1], 0, sb[0], ptr(&pk));
        Py_END_ALLOW_THREADS
    }
    give(&pk);
    PyBuffer_Release(&vb);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* pack_a(a, groups, packed): a (groups * M rows x K, rows contiguous) as sgemm.h's row
   panels, group by group (each group's M rows padded to a multiple of SG_MR); packed holds
   groups * ceil(M / SG_MR) * SG_MR * K floats */
static PyObject* py_pack_a(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pack_a(a, groups, packed)");
        return NULL;
    }
    long groups = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer va;
    long long sa[2], lda;
    if (matrix(args[0], &va, 0, sa, &lda, "a") < 0) return NULL;
    buf pk;
    if (take(args[2], &pk, 1, "packed") < 0) {
        PyBuffer_Release(&va);
        return NULL;
    }
    long M = groups > 0 ? sa[0] / groups : 0, K = sa[1], per = (M + SG_MR - 1) / SG_MR * SG_MR * K;
    int ok = pk.held && groups > 0 && M * groups == sa[0] && pk.view.len == groups * per * 4;
    if (!ok) PyErr_SetString(PyExc_ValueError, "native pack_a: the packed buffer does not fit a and groups");
    else
        for (long g = 0; g < groups; g++) sg_pack_a_panels((const float*)va.buf + g * M * lda, M, K, lda, (float*)ptr(&pk) + g * per);
    give(&pk);
    PyBuffer_Release(&va);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* gemm_packed(a, packed, c, alpha): c = alpha a x B for B packed by pack_b (its N is c's
   columns, its K a's columns); a and c 2-D float32 with contiguous rows */
static PyObject* py_gemm_packed(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "gemm_packed(a, packed, c, alpha)");
        return NULL;
    }
    float alpha = (float)PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer va, vc;
    long long sa[2], sc[2];
    sg_job j;
    if (matrix(args[0], &va, 0, sa, &j.lda, "a") < 0) return NULL;
    if (matrix(args[2], &vc, 1, sc, &j.ldc, "c") < 0) {
        PyBuffer_Release(&va);
        return NULL;
    }
    buf pk;
    int ok = take(args[1], &pk, 0, "packed") == 0;
    if (ok) {
        j.m = sa[0], j.k = sa[1], j.n = sc[1], j.alpha = alpha;
        ok = pk.held && sc[0] == j.m && pk.view.len == (j.n + SG_NR - 1) / SG_NR * SG_NR * j.k * 4;
        if (!ok) PyErr_SetString(PyExc_ValueError, "native gemm_packed: shapes do not fit");
        else if (j.m > 0 && j.n > 0) {
            j.a = va.buf, j.bp = ptr(&pk), j.c = vc.buf;
            if (j.k == 0) {
                for (long i = 0; i < j.m; i++) memset(j.c + i * j.ldc, 0, (size_t)j.n * sizeof(float));
            } else {
                long tasks = sg_plan(&j, pool_size());
                Py_BEGIN_ALLOW_THREADS
                if (tasks == 1) sg_tasks(&j, 0, 1);
                else parallel_for(sg_tasks, &j, tasks);
                Py_END_ALLOW_THREADS
            }
        }
        give(&pk);
    }
    PyBuffer_Release(&va);
    PyBuffer_Release(&vc);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyObject* py_sgemm_panel(PyObject* self, PyObject* unused)
{
    (void)self; (void)unused;
    return Py_BuildValue("(ii)", SG_MR, SG_NR);
}

/* pool(geometry, x, count or None, y): see pooling.h */
static PyObject* py_pool(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "pool(geometry, x, count, y)");
        return NULL;
    }
    buf b[4];
    static const char* names[4] = {"geometry", "x", "count", "y"};
    int n = 0, ok = 1;
    for (; n < 4; n++)
        if (take(args[n], &b[n], n == 3, names[n]) < 0) { ok = 0; break; }
    if (ok) {
        const long long* g = ptr(&b[0]);
        pool_job j = {g, ptr(&b[1]), ptr(&b[2]), ptr(&b[3])};
        if (!g || b[0].view.len != PL_HEAD * 8 || !j.x || !j.y || g[PL_PLANES] < 0 || g[PL_SW] < 1 || g[PL_SH] < 1
            || b[1].view.len < g[PL_PLANES] * g[PL_H] * g[PL_W] * 4
            || b[3].view.len != g[PL_PLANES] * g[PL_HO] * g[PL_WO] * 4
            || (g[PL_AVG] && (!j.count || b[2].view.len != g[PL_HO] * g[PL_WO] * 4))) {
            PyErr_SetString(PyExc_ValueError, "native pool: geometry does not fit the buffers");
            ok = 0;
        } else {
            long rows = g[PL_PLANES] * g[PL_HO];
            Py_BEGIN_ALLOW_THREADS
            if (rows * g[PL_WO] * g[PL_KH] * g[PL_KW] < PARALLEL_WORK) pool_rows(&j, 0, rows);
            else parallel_for(pool_rows, &j, rows);
            Py_END_ALLOW_THREADS
        }
    }
    for (int i = 0; i < n; i++) give(&b[i]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyObject* py_expr_ops(PyObject* self, PyObject* unused)
{
    (void)self; (void)unused;
    PyObject* out = PyList_New(XOP_COUNT);
    for (int i = 0; i < XOP_COUNT; i++) PyList_SET_ITEM(out, i, PyUnicode_FromString(XOP_NAMES[i]));
    return out;
}


static int strided4(PyObject* o, Py_buffer* view, int writable, long st[4], const char* what)
{
    if (PyObject_GetBuffer(o, view, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (view->ndim != 4 || view->itemsize != 4 || !view->format || strcmp(view->format, "f") != 0) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "native attention: %s is not a 4-D float32 buffer", what);
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        if (view->strides[i] % 4) {
            PyBuffer_Release(view);
            PyErr_Format(PyExc_ValueError, "native attention: %s is not float-aligned", what);
            return -1;
        }
        st[i] = view->strides[i] / 4;
    }
    return 0;
}

/* attention(q, kt, v, mask or None, out, scale): 4-D views, see attn_job */
static PyObject* py_attention(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "attention takes 6 arguments");
        return NULL;
    }
    double scale = PyFloat_AsDouble(args[5]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer vw[5];
    attn_job j;
    long* st[5] = {j.qs, j.ks, j.vs, j.ms, j.os};
    static const char* names[5] = {"q", "kt", "v", "mask", "out"};
    int n = 0, ok = 1;
    for (; n < 5; n++) {
        if (n == 3 && args[3] == Py_None) continue;
        if (strided4(args[n], &vw[n], n == 4, st[n], names[n]) < 0) { ok = 0; break; }
    }
    int held_mask = args[3] != Py_None;
    if (ok) {
        const Py_ssize_t *qd = vw[0].shape, *kd = vw[1].shape, *vd = vw[2].shape, *od = vw[4].shape;
        j.q = vw[0].buf; j.kt = vw[1].buf; j.v = vw[2].buf; j.o = vw[4].buf;
        j.mask = held_mask ? vw[3].buf : NULL;
        j.B = qd[0]; j.H = qd[1]; j.Sq = qd[2]; j.D = qd[3]; j.Sk = kd[3]; j.Dv = vd[3]; j.scale = (float)scale;
        int fits = kd[0] == j.B && kd[1] == j.H && kd[2] == j.D && vd[0] == j.B && vd[1] == j.H && vd[2] == j.Sk
                   && od[0] == j.B && od[1] == j.H && od[2] == j.Sq && od[3] == j.Dv
                   && j.qs[3] == 1 && j.ks[3] == 1 && j.vs[3] == 1 && j.os[3] == 1;
        if (held_mask) {
            const Py_ssize_t* md = vw[3].shape;
            fits = fits && md[0] == j.B && md[1] == j.H && md[2] == j.Sq && md[3] == j.Sk;
        }
        if (!fits) {
            PyErr_SetString(PyExc_ValueError, "native attention: shapes do not fit");
            ok = 0;
        } else {
            long rows = j.B * j.H * j.Sq, tasks = j.B * j.H * ((j.Sq + ATT_R - 1) / ATT_R);
            Py_BEGIN_ALLOW_THREADS
            if (rows * j.Sk * (j.D + j.Dv) < PARALLEL_WORK) attn_rows(&j, 0, tasks);
            else parallel_for(attn_rows, &j, tasks);
            Py_END_ALLOW_THREADS
        }
    }
    for (int i = 0; i < n; i++)
        if (i != 3 || held_mask) PyBuffer_Release(&vw[i]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* layernorm(x, scale, bias or None, y, eps): rows of the last axis of C-contiguous float32 arrays */
/* LayerNormalization over the channels of [N][C][inner] (ai.graphopt::ChannelLayerNormalization):
   a task is one image's 16 consecutive positions, their channels inner floats apart; the mean,
   the centred variance and the result as ln_rows computes them, 16 positions in the lanes */
typedef struct { const float *x, *scale, *bias; float* y; long C, inner, blocks; float eps; } cln_job;

static void cln_tasks(void* ctx, long begin, long end)
{
    const cln_job* j = ctx;
    const long C = j->C, inner = j->inner;
    for (long t = begin; t < end; t++) {
        const long n = t / j->blocks, p0 = t % j->blocks * VL;
        const int m = inner - p0 < VL ? (int)(inner - p0) : VL;
        const float* x = j->x + n * C * inner + p0;
        float* y = j->y + n * C * inner + p0;
        v16 s = {0}, q = {0};
        for (long c = 0; c < C; c++) s += m == VL ? *(const v16u*)(x + c * inner) : vload_n(x + c * inner, m);
        const v16 mean = s / (float)C;
        for (long c = 0; c < C; c++) {
            v16 d = (m == VL ? *(const v16u*)(x + c * inner) : vload_n(x + c * inner, m)) - mean;
            q += d * d;
        }
        v16 inv;
        for (int l = 0; l < VL; l++) inv[l] = 1.0f / sqrtf(q[l] / (float)C + j->eps);
        for (long c = 0; c < C; c++) {
            v16 d = (m == VL ? *(const v16u*)(x + c * inner) : vload_n(x + c * inner, m)) - mean;
            v16 v = d * inv * j->scale[c];
            if (j->bias) v = v + j->bias[c];
            if (m == VL) *(v16u*)(y + c * inner) = v;
            else vstore_n(y + c * inner, v, m);
        }
    }
}

/* layernorm(x, scale, bias, y, eps[, inner]): over the last axis (rows of len(scale)), or with
   inner > 1 over the channels of [N][len(scale)][inner] */
static PyObject* py_layernorm(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5 && nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "layernorm takes 5 or 6 arguments");
        return NULL;
    }
    double eps = PyFloat_AsDouble(args[4]);
    long inner = nargs == 6 ? PyLong_AsLong(args[5]) : 1;
    if (PyErr_Occurred()) return NULL;
    if (inner < 1) {
        PyErr_SetString(PyExc_ValueError, "native layernorm: inner must be positive");
        return NULL;
    }
    buf b[4];
    static const char* names[4] = {"x", "scale", "bias", "y"};
    int n = 0, ok = 1;
    for (; n < 4; n++)
        if (take(args[n], &b[n], n == 3, names[n]) < 0) { ok = 0; break; }
    if (ok) {
        long cols = b[1].view.len / 4;
        ln_job j = {ptr(&b[0]), ptr(&b[1]), ptr(&b[2]), ptr(&b[3]), cols, (float)eps};
        if (cols < 1 || b[0].view.len != b[3].view.len || b[0].view.len % (cols * 4)
            || (b[2].held && b[2].view.len != b[1].view.len)) {
            PyErr_SetString(PyExc_ValueError, "native layernorm: shapes do not fit");
            ok = 0;
        } else if (inner > 1) {
            long images = b[0].view.len / (cols * 4) / inner;
            cln_job c = {j.x, j.scale, j.bias, j.y, cols, inner, (inner + VL - 1) / VL, j.eps};
            if (images * cols * inner * 4 != b[0].view.len) {
                PyErr_SetString(PyExc_ValueError, "native layernorm: shapes do not fit");
                ok = 0;
            } else {
                Py_BEGIN_ALLOW_THREADS
                if (images * cols * inner < PARALLEL_WORK) cln_tasks(&c, 0, images * c.blocks);
                else parallel_for(cln_tasks, &c, images * c.blocks);
                Py_END_ALLOW_THREADS
            }
        } else {
            long rows = b[0].view.len / (cols * 4);
            Py_BEGIN_ALLOW_THREADS
            if (rows * cols < PARALLEL_WORK) ln_rows(&j, 0, rows);
            else parallel_for(ln_rows, &j, rows);
            Py_END_ALLOW_THREADS
        }
    }
    for (int i = 0; i < n; i++) give(&b[i]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* threads(): the pool's thread count, the caller included (starting the pool) */
static PyObject* py_threads(PyObject* self, PyObject* unused)
{
    (void)self; (void)unused;
    return PyLong_FromLong(pool_size());
}

static PyObject* py_variants(PyObject* self, PyObject* unused)
{
    (void)self; (void)unused;
    PyObject* out = PyList_New(N_VARIANTS);
    for (int i = 0; i < N_VARIANTS; i++)
        PyList_SET_ITEM(out, i, Py_BuildValue("(ii)", VARIANTS[i].mt, VARIANTS[i].rv));
    return out;
}

static PyMethodDef methods[] = {
    {"conv", (PyCFunction)(void (*)(void))py_conv, METH_FASTCALL,
     "conv(variant, geometry, x, planes, w, offs, bias, res, y, lo, hi, epilogue, col)"},
    {"expr", (PyCFunction)(void (*)(void))py_expr, METH_FASTCALL, "expr(program, geometry, inputs, outputs)"},
    {"expr_ops", py_expr_ops, METH_NOARGS, "the expression programs' op names, by opcode"},
    {"blas_bind", py_blas_bind, METH_O, "blas_bind(path): use NumPy's OpenBLAS loaded from path; '' or why not"},
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_FASTCALL, "gemm(a, b, c, ta, tb, alpha, beta)"},
    {"pack_b", (PyCFunction)(void (*)(void))py_pack_b, METH_FASTCALL, "pack_b(b, packed): B's panels for gemm_packed"},
    {"gemm_packed", (PyCFunction)(void (*)(void))py_gemm_packed, METH_FASTCALL, "gemm_packed(a, packed, c, alpha)"},
    {"sgemm_panel", py_sgemm_panel, METH_NOARGS, "(rows of a panel of A, columns of a panel of B)"},
    {"pack_a", (PyCFunction)(void (*)(void))py_pack_a, METH_FASTCALL, "pack_a(a, groups, packed): A's row panels"},
    {"pool", (PyCFunction)(void (*)(void))py_pool, METH_FASTCALL, "pool(geometry, x, count, y)"},
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_FASTCALL, "attention(q, k, v, mask, out, scale)"},
    {"layernorm", (PyCFunction)(void (*)(void))py_layernorm, METH_FASTCALL, "layernorm(x, scale, bias, y, eps)"},
    {"variants", py_variants, METH_NOARGS, "[(MT, RV)] of the dense conv tiles"},
    {"threads", py_threads, METH_NOARGS, "the pool's thread count, the caller included"},
    REDUCE_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_graphopt_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__graphopt_native(void) { return PyModule_Create(&module); }

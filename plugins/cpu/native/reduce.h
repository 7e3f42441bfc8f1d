/* Reductions and the squeeze-excitation pieces, natively (their Python bindings are listed in
   REDUCE_METHODS, which kernels.c puts in the module's method table; native_small.py calls them).

   reduce_rows: the sum, mean or max of each contiguous row of a C-contiguous float32 array (a
   ReduceSum/Mean/Max over trailing axes, a GlobalAveragePool/GlobalMaxPool of NCHW planes).
   NumPy reduces a short inner axis one row at a time at ~70 ns a row (576 planes of 7x7:
   40 us); here a row is a few vector loads. Summation order: each block of RB_BLOCK values is
   summed in float32 over 16 lanes (lane i takes values i, i+16, ...; two accumulators), the 16
   lanes are added as a tree (red_hsum), and the blocks' sums are added in double; the mean divides that
   double by n and rounds once. NumPy sums float32 pairwise in blocks of 8 (so the two
   orders differ, both within float32 rtol 1e-4 of the exact sum for any row length: a
   lane sums at most RB_BLOCK / 16 = 64 values). The max propagates NaN, as np.max.

   small_conv: a 1x1, stride-1 conv over a plane of fewer than 16 positions (the FCs of a
   squeeze-excitation block, a classifier head on a pooled map), y = W x + b with the epilogue
   (a clamp of acc [+ residual], or an expression program over acc) applied in registers' reach:
   one call where OpenBLAS's gemv, NumPy's bias add and a separate program run took three. W
   comes packed as panels of up to 64 output channels, each panel (C, 64) contiguous, so a
   task streams its panel once; each output is the sum over c in order of x[c] w[c][m], in
   float32 (OpenBLAS's gemv blocks the same sum differently: results agree within float32
   rounding, not bit for bit). */
#ifndef GRAPHOPT_REDUCE_H
#define GRAPHOPT_REDUCE_H

#define RB_BLOCK 1024   /* values summed in float32 before the running sum moves to double */
#define RED_PARALLEL 65536 /* values below which a reduction runs on the caller alone */
#define SC_PANEL 64     /* output channels per packed weight panel (4 vectors) */
#define SC_PARALLEL 262144 /* multiply-adds below which a small conv runs on the caller alone */
#define SC_SCRATCH 8192 /* floats of an epilogue program's blocks, on the task's stack */

enum { RED_SUM, RED_MEAN, RED_MAX };

/* x[0 .. n) (n < 16) in a vector, lanes past n set to fill (one masked load with AVX-512) */
static inline v16 red_tail(const float* x, long n, float fill)
{
#if defined(__AVX512F__)
    return (v16)_mm512_mask_loadu_ps(_mm512_set1_ps(fill), (__mmask16)((1u << n) - 1), x);
#else
    v16 t = vsplat(fill);
    for (long i = 0; i < n; i++) t[i] = x[i];
    return t;
#endif
}

typedef float red_v8 __attribute__((vector_size(32)));
typedef float red_v4 __attribute__((vector_size(16)));

/* the 16 lanes' sum as a tree: lane i + lane i+8, then +4, +2, +1 (4 dependent adds, not 15) */
static inline float red_hsum(v16 v)
{
    /* halves by memcpy (register extracts once compiled): portable to compilers without
       __builtin_shufflevector (GCC before 12) */
    red_v8 a, a_hi;
    memcpy(&a, &v, sizeof a);
    memcpy(&a_hi, (const char*)&v + sizeof a, sizeof a_hi);
    a += a_hi;
    red_v4 b, b_hi;
    memcpy(&b, &a, sizeof b);
    memcpy(&b_hi, (const char*)&a + sizeof b, sizeof b_hi);
    b += b_hi;
    return (b[0] + b[2]) + (b[1] + b[3]);
}

static double red_sum(const float* x, long n)
{
    double total = 0.0;
    for (long b = 0; b < n; b += RB_BLOCK) {
        const long e = n - b < RB_BLOCK ? n : b + RB_BLOCK;
        v16 a0 = vsplat(0.0f), a1 = vsplat(0.0f);
        long i = b;
        for (; i + 2 * VL <= e; i += 2 * VL) {
            a0 += *(const v16u*)(x + i);
            a1 += *(const v16u*)(x + i + VL);
        }
        if (i + VL <= e) {
            a0 += *(const v16u*)(x + i);
            i += VL;
        }
        if (i < e) a1 += red_tail(x + i, e - i, 0.0f);
        total += (double)red_hsum(a0 + a1);
    }
    return total;
}

static float red_max(const float* x, long n)
{
    v16 m = vsplat(-INFINITY);
    v16i nan = {0};
    long i = 0;
    for (; i + VL <= n; i += VL) {
        v16 v = *(const v16u*)(x + i);
        nan |= v != v;
        m = vsel(v > m, v, m);
    }
    if (i < n) {
        v16 v = red_tail(x + i, n - i, -INFINITY);
        nan |= v != v;
        m = vsel(v > m, v, m);
    }
    float r = m[0];
    for (int k = 0; k < VL; k++) {
        if (nan[k]) return NAN;
        r = m[k] > r ? m[k] : r;
    }
    return r;
}

typedef struct { const float* x; float* y; long n; int kind; } red_job;

static void red_rows(void* ctx, long begin, long end)
{
    const red_job* j = ctx;
    for (long r = begin; r < end; r++) {
        const float* x = j->x + r * j->n;
        if (j->kind == RED_MAX) j->y[r] = red_max(x, j->n);
        else {
            double s = red_sum(x, j->n);
            j->y[r] = (float)(j->kind == RED_MEAN ? s / (double)j->n : s);
        }
    }
}

/* a C-contiguous (writable) buffer, or an error naming `what`; None gives buf == NULL */
static int red_buffer(PyObject* o, Py_buffer* v, int writable, const char* what)
{
    v->buf = NULL;
    if (o == Py_None) return 0;
    if (PyObject_GetBuffer(o, v, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Format(PyExc_ValueError, "native reduce: %s is not a C-contiguous%s buffer", what,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

static void red_release(Py_buffer* v)
{
    if (v->buf) PyBuffer_Release(v);
}

/* reduce_rows(x, y, n, kind): y[r] = sum / mean / max (kind 0 / 1 / 2) of x[r*n .. (r+1)*n) */
static PyObject* py_reduce_rows(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "reduce_rows(x, y, n, kind)");
        return NULL;
    }
    long n = PyLong_AsLong(args[2]), kind = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer xv, yv;
    if (red_buffer(args[0], &xv, 0, "x") < 0) return NULL;
    if (red_buffer(args[1], &yv, 1, "y") < 0) {
        red_release(&xv);
        return NULL;
    }
    long rows = yv.buf ? yv.len / 4 : -1;
    if (!xv.buf || !yv.buf || n < 1 || kind < RED_SUM || kind > RED_MAX || yv.len % 4 || xv.len != rows * n * 4) {
        red_release(&xv);
        red_release(&yv);
        PyErr_SetString(PyExc_ValueError, "native reduce: the buffers do not fit rows of n values");
        return NULL;
    }
    red_job j = {xv.buf, yv.buf, n, (int)kind};
    Py_BEGIN_ALLOW_THREADS
    if (rows * n < RED_PARALLEL) red_rows(&j, 0, rows);
    else parallel_for(red_rows, &j, rows);
    Py_END_ALLOW_THREADS
    red_release(&xv);
    red_release(&yv);
    Py_RETURN_NONE;
}

/* ---- the excitation: each row of x times its own scale (x[N,C,H,W] * s[N,C,1,1]) ---- */

typedef struct { const float *x, *s; float* y; long n; } scale_job;

static void scale_rows(void* ctx, long begin, long end)
{
    const scale_job* j = ctx;
    const long n = j->n;
    for (long r = begin; r < end; r++) {
        const float* x = j->x + r * n;
        float* y = j->y + r * n;
        const v16 s = vsplat(j->s[r]);
        long i = 0;
        for (; i + VL <= n; i += VL) *(v16u*)(y + i) = *(const v16u*)(x + i) * s;
#if defined(__AVX512F__)
        if (i < n) {
            __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
            _mm512_mask_storeu_ps(y + i, k, (__m512)(_mm512_maskz_loadu_ps(k, x + i) * (__m512)s));
        }
#else
        for (; i < n; i++) y[i] = x[i] * s[0];
#endif
    }
}

/* scale_rows(x, s, y, n): y[r*n + i] = x[r*n + i] * s[r] (y may be x); the float32 products NumPy
   computes, without its broadcast loop's cost per row of n */
static PyObject* py_scale_rows(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scale_rows(x, s, y, n)");
        return NULL;
    }
    long n = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer v[3];
    static const char* names[3] = {"x", "s", "y"};
    int k = 0, ok = 1;
    for (; k < 3; k++)
        if (red_buffer(args[k], &v[k], k == 2, names[k]) < 0) {
            ok = 0;
            break;
        }
    if (ok) {
        long rows = v[1].buf ? v[1].len / 4 : -1;
        if (!v[0].buf || !v[1].buf || !v[2].buf || n < 1 || v[1].len % 4 || v[0].len != rows * n * 4
            || v[2].len != v[0].len) {
            PyErr_SetString(PyExc_ValueError, "native scale_rows: the buffers do not fit rows of n values");
            ok = 0;
        } else {
            scale_job j = {v[0].buf, v[1].buf, v[2].buf, n};
            Py_BEGIN_ALLOW_THREADS
            if (rows * n < RED_PARALLEL) scale_rows(&j, 0, rows);
            else parallel_for(scale_rows, &j, rows);
            Py_END_ALLOW_THREADS
        }
    }
    for (int i = 0; i < k; i++) red_release(&v[i]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* ---- the small-plane 1x1 conv ---- */

/* geometry (int64): N, C, P (plane positions), M, Mp (M rounded up to 16: the packed width) */
enum { SC_N, SC_C, SC_P, SC_M, SC_MP, SC_HEAD };

typedef struct {
    const long long* g;
    const float *x, *w, *bias, *res;
    float *y;
    float lo, hi;
    const xprog* prog;
    long panels;
} sc_job;

/* t[0 .. 16 NV) = sum over c of x[c * P] w[c][0 .. 16 NV) (w: a panel, rows of ld floats) */
static inline __attribute__((always_inline)) void sc_panel(const float* x, long P, const float* w, long ld, long C,
                                                           float* t, const int NV)
{
    v16 a[4] = {{0}, {0}, {0}, {0}}, b[4] = {{0}, {0}, {0}, {0}};
    long c = 0;
    /* two channels at a time into two sets of accumulators: the adds of one do not wait on the
       other's (summed at the end: the order is c even, c odd, then the pairs' sums) */
    for (; c + 2 <= C; c += 2) {
        v16 x0 = vsplat(x[c * P]), x1 = vsplat(x[(c + 1) * P]);
        const float* w0 = w + c * ld;
        for (int k = 0; k < NV; k++) {
            a[k] += x0 * *(const v16u*)(w0 + k * VL);
            b[k] += x1 * *(const v16u*)(w0 + ld + k * VL);
        }
    }
    if (c < C) {
        v16 x0 = vsplat(x[c * P]);
        for (int k = 0; k < NV; k++) a[k] += x0 * *(const v16u*)(w + c * ld + k * VL);
    }
    for (int k = 0; k < NV; k++) *(v16*)(t + k * VL) = a[k] + b[k];
}

static void sc_tasks(void* ctx, long begin, long end)
{
    const sc_job* j = ctx;
    const long long* g = j->g;
    const long C = g[SC_C], P = g[SC_P], M = g[SC_M], Mp = g[SC_MP];
    float scratch_store[j->prog ? xprog_scratch(j->prog) : 1];
    if (j->prog) xprog_fill_consts(j->prog, scratch_store);
    float t[SC_PANEL] __attribute__((aligned(64)));
    for (long task = begin; task < end; task++) {
        long panel = task % j->panels, np = task / j->panels, n = np / P, p = np % P;
        long m0 = panel * SC_PANEL, width = Mp - m0 < SC_PANEL ? Mp - m0 : SC_PANEL;
        const float* w = j->w + m0 * C; /* earlier panels are all SC_PANEL wide */
        const float* x = j->x + n * C * P + p;
        switch (width / VL) {
        case 1: sc_panel(x, P, w, width, C, t, 1); break;
        case 2: sc_panel(x, P, w, width, C, t, 2); break;
        case 3: sc_panel(x, P, w, width, C, t, 3); break;
        default: sc_panel(x, P, w, width, C, t, 4); break;
        }
        long valid = M - m0 < width ? M - m0 : width;
        if (j->bias)
            for (long m = 0; m < valid; m++) t[m] += j->bias[m0 + m];
        float* y = j->y + (n * M + m0) * P + p;
        if (j->prog) {
            const int step[1] = {1};
            const void* in[1] = {t};
            void* out[1] = {t};
            xprog_block(j->prog, scratch_store, (int)width, in, step, out);
            for (long m = 0; m < valid; m++) y[m * P] = t[m];
            continue;
        }
        const float* r = j->res ? j->res + (n * M + m0) * P + p : NULL;
        for (long m = 0; m < valid; m++) {
            float v = r ? t[m] + r[m * P] : t[m];
            v = v < j->lo ? j->lo : v; /* NaN passes the clamp, as in the conv's store_tile */
            y[m * P] = v > j->hi ? j->hi : v;
        }
    }
}

/* small_conv(geometry, x, w, bias, res, y, lo, hi, program): see above; w packed by
   native_small.py, bias (M,) or None, res (N, M, P) or None, program over acc or None */
static PyObject* py_small_conv(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "small_conv(geometry, x, w, bias, res, y, lo, hi, program)");
        return NULL;
    }
    float lo = (float)PyFloat_AsDouble(args[6]), hi = (float)PyFloat_AsDouble(args[7]);
    if (PyErr_Occurred()) return NULL;
    static const char* names[7] = {"geometry", "x", "w", "bias", "res", "y", "program"};
    Py_buffer v[7];
    int n = 0, ok = 1;
    for (; n < 7; n++)
        if (red_buffer(args[n < 6 ? n : 8], &v[n], n == 5, names[n]) < 0) {
            ok = 0;
            break;
        }
    xprog prog;
    const long long* g = ok ? v[0].buf : NULL;
    if (ok && v[6].buf && (v[6].len % 4 || xprog_parse(v[6].buf, v[6].len / 4, &prog) < 0 || prog.n_in != 1
                           || prog.n_out != 1 || prog.in_kind[0] || prog.out_kind[0]
                           || xprog_scratch(&prog) > SC_SCRATCH)) {
        PyErr_SetString(PyExc_ValueError, "native small_conv: the program must map acc alone to one float32 value");
        ok = 0;
    } else if (ok) {
        long long N = g && v[0].len == SC_HEAD * 8 ? g[SC_N] : -1, C = g ? g[SC_C] : 0, P = g ? g[SC_P] : 0,
                  M = g ? g[SC_M] : 0, Mp = g ? g[SC_MP] : 0;
        if (N < 0 || C < 1 || P < 1 || M < 1 || Mp != (M + VL - 1) / VL * VL || !v[1].buf || !v[2].buf || !v[5].buf
            || v[1].len != N * C * P * 4 || v[2].len != C * Mp * 4 || v[5].len != N * M * P * 4
            || (v[3].buf && v[3].len != M * 4) || (v[4].buf && v[4].len != N * M * P * 4)) {
            PyErr_SetString(PyExc_ValueError, "native small_conv: geometry does not fit the buffers");
            ok = 0;
        } else {
            sc_job j = {g, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[5].buf, lo, hi, v[6].buf ? &prog : NULL,
                        (Mp + SC_PANEL - 1) / SC_PANEL};
            long tasks = N * P * j.panels;
            Py_BEGIN_ALLOW_THREADS
            if (N * P * C * Mp < SC_PARALLEL) sc_tasks(&j, 0, tasks);
            else parallel_for(sc_tasks, &j, tasks);
            Py_END_ALLOW_THREADS
        }
    }
    for (int i = 0; i < n; i++) red_release(&v[i]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

#define REDUCE_METHODS                                                                                        \
    {"reduce_rows", (PyCFunction)(void (*)(void))py_reduce_rows, METH_FASTCALL, "reduce_rows(x, y, n, kind)"}, \
    {"scale_rows", (PyCFunction)(void (*)(void))py_scale_rows, METH_FASTCALL, "scale_rows(x, s, y, n)"},     \
    {"small_conv", (PyCFunction)(void (*)(void))py_small_conv, METH_FASTCALL,                                  \
     "small_conv(geometry, x, w, bias, res, y, lo, hi, program)"},

#endif

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
#include <stddef.h>
#include <string.h>

#include "pool.h"

#define VL 16
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

#define MAX_TILE (16 * 6 * VL)

/* y[m][oy*Wo + ox] = clamp(t[m][p - p0] + bias[m] + res[m][oy*Wo + ox], lo, hi) for the flat
   positions p of [p0, p0 + B) whose column ox < Wo. NaN passes the clamp (as NumPy's maximum). */
static void store_tile(const float* restrict t, int mrows, int B, int p0, int Wq, int Wo, const float* bias,
                       const float* res, long plane, float lo, float hi, float* y)
{
    for (int m = 0; m < mrows; m++) {
        const float* tm = t + m * B;
        float b = bias ? bias[m] : 0.0f;
        const float* rm = res ? res + m * plane : NULL;
        float* ym = y + m * plane;
        int p = p0, end = p0 + B;
        while (p < end) {
            int oy = p / Wq, ox = p - oy * Wq;
            int run = Wq - ox < end - p ? Wq - ox : end - p;
            int valid = ox < Wo ? (Wo - ox < run ? Wo - ox : run) : 0;
            const float* src = tm + (p - p0);
            float* dst = ym + (long)oy * Wo + ox;
            if (rm) {
                const float* rr = rm + (long)oy * Wo + ox;
                for (int i = 0; i < valid; i++) {
                    float v = (src[i] + b) + rr[i];
                    v = v < lo ? lo : v;
                    dst[i] = v > hi ? hi : v;
                }
            } else {
                for (int i = 0; i < valid; i++) {
                    float v = src[i] + b;
                    v = v < lo ? lo : v;
                    dst[i] = v > hi ? hi : v;
                }
            }
            p += run;
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
    int variant, depthwise;
} conv_job;

static void fill_planes(void* ctx, long begin, long end)
{
    const conv_job* j = ctx;
    const long long* g = j->g;
    const long H = g[G_H], W = g[G_W], cs = g[G_CSTRIDE], wq = g[G_WQ];
    for (long ch = begin; ch < end; ch++) {
        const float* xc = j->x + ch * H * W;
        float* pc = j->planes + ch * cs;
        for (long k = 0; k < g[G_COPIES]; k++) {
            const long long* d = g + G_HEAD + 9 * k;
            const long off = d[0], r0 = d[1], r1 = d[2], q0 = d[3], q1 = d[4], xr = d[5], xq = d[6], sy = d[7],
                       sx = d[8];
            for (long r = r0; r < r1; r++) {
                const float* src = xc + (xr + (r - r0) * sy) * W + xq;
                float* dst = pc + off + r * wq + q0;
                if (sx == 1)
                    memcpy(dst, src, (size_t)(q1 - q0) * sizeof(float));
                else
                    for (long q = 0; q < q1 - q0; q++) dst[q] = src[q * sx];
            }
        }
    }
}

static void conv_tasks(void* ctx, long begin, long end)
{
    const conv_job* j = ctx;
    const long long* g = j->g;
    const int G = g[G_G], C = g[G_C], M = g[G_M], K = g[G_K], P = g[G_P], Wq = g[G_WQ], Wo = g[G_WO];
    const long cs = g[G_CSTRIDE], plane = g[G_HO] * g[G_WO];
    const float* src = j->planes ? j->planes : j->x;
    if (j->depthwise) {
        int rv = 4;
        while (rv > 1 && P < rv * VL) rv--;
        const int B = rv * VL, pb = (P + B - 1) / B, channels = G * M;
        for (long task = begin; task < end; task++) {
            float t[4 * VL];
            int jb = task % pb;
            long oc = task / pb;
            int o = oc % channels, n = oc / channels;
            int p0 = jb * B < P - B ? jb * B : P - B;
            const float* xc = src + ((long)n * G + o / M) * cs + p0;
            const float* wo = j->w + (long)o * K;
            v16 acc[4] = {{0}};
            for (int k = 0; k < K; k++) {
                v16 wv = (v16){0} + wo[k];
                const float* xk = xc + j->offs[k];
                for (int r = 0; r < rv; r++) acc[r] += wv * *(const v16u*)(xk + r * VL);
            }
            for (int r = 0; r < rv; r++) *(v16u*)(t + r * VL) = acc[r];
            long yo = ((long)n * channels + o) * plane;
            store_tile(t, 1, B, p0, Wq, Wo, j->bias ? j->bias + o : NULL, j->res ? j->res + yo : NULL, plane,
                       j->lo, j->hi, j->y + yo);
        }
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
        store_tile(t, rows, B, p0, Wq, Wo, j->bias ? j->bias + gi * M + m0 : NULL, j->res ? j->res + yo : NULL,
                   plane, j->lo, j->hi, j->y + yo);
    }
}

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

/* conv(variant, geometry, x, planes, w, offs, bias, res, y, lo, hi); variant -1 = depthwise */
static PyObject* py_conv(PyObject* self, PyObject* const* args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "conv takes 11 arguments");
        return NULL;
    }
    int variant = (int)PyLong_AsLong(args[0]);
    double lo = PyFloat_AsDouble(args[9]), hi = PyFloat_AsDouble(args[10]);
    if (PyErr_Occurred()) return NULL;
    if (variant < -1 || variant >= N_VARIANTS) {
        PyErr_SetString(PyExc_ValueError, "native conv: no such variant");
        return NULL;
    }
    buf b[8];
    static const char* names[8] = {"geometry", "x", "planes", "w", "offs", "bias", "res", "y"};
    int n_taken = 0, ok = 1;
    for (; n_taken < 8; n_taken++)
        if (take(args[1 + n_taken], &b[n_taken], n_taken == 2 || n_taken == 7, names[n_taken]) < 0) { ok = 0; break; }
    if (ok) {
        conv_job j = {ptr(&b[0]), ptr(&b[1]), ptr(&b[2]), ptr(&b[3]), ptr(&b[4]), ptr(&b[5]), ptr(&b[6]), ptr(&b[7]),
                      (float)lo, (float)hi, variant < 0 ? 0 : variant, variant < 0};
        const long long* g = j.g;
        int P = g[G_P];
        int need = variant < 0 ? VL : VARIANTS[variant].rv * VL;
        if (!j.g || !j.x || !j.w || !j.offs || !j.y || P < need || (!g[G_DIRECT] && !j.planes)) {
            PyErr_SetString(PyExc_ValueError, "native conv: geometry does not fit the kernel");
            ok = 0;
        } else {
            long tasks;
            if (variant < 0) {
                int rv = 4;
                while (rv > 1 && P < rv * VL) rv--;
                tasks = g[G_N] * g[G_G] * g[G_M] * ((P + rv * VL - 1) / (rv * VL));
            } else {
                int mt = VARIANTS[variant].mt, B = VARIANTS[variant].rv * VL;
                tasks = g[G_N] * g[G_G] * ((g[G_M] + mt - 1) / mt) * ((P + B - 1) / B);
            }
            Py_BEGIN_ALLOW_THREADS
            if (!g[G_DIRECT]) parallel_for(fill_planes, &j, g[G_N] * g[G_G] * g[G_C]);
            parallel_for(conv_tasks, &j, tasks);
            Py_END_ALLOW_THREADS
        }
    }
    for (int i = 0; i < n_taken; i++) give(&b[i]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
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
    {"conv", (PyCFunction)(void (*)(void))py_conv, METH_FASTCALL, "conv(variant, geometry, x, planes, w, offs, bias, res, y, lo, hi)"},
    {"variants", py_variants, METH_NOARGS, "[(MT, RV)] of the dense conv tiles"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_graphopt_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__graphopt_native(void) { return PyModule_Create(&module); }

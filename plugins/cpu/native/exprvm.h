/* Pointwise expressions run natively: graphopt's expression IR (graphopt/expr.py) compiled by
   plugins/cpu/nativeexpr.py into a short register program, run here over blocks of XB values.

   A program is one int32 array (so that a call passes one buffer):
     n_in, n_const, n_comp, n_out, n_instr,
     kind of each input (0 float32, 1 bool as uint8),
     register of each output, kind of each output,
     each constant's float32 bits,
     n_instr x (op, dst, a, b, c).
   Registers 0 .. n_in-1 are the inputs, then the constants, then n_comp computed registers;
   an instruction writes a computed register. Bools live in registers as 1.0f / 0.0f, which is
   also what a Cast from bool to float32 gives. Each block of up to XB values is computed whole
   before any output is written, so an output may be written over an input of the same shape.

   The instruction set is the expression IR's primitives that have a float32 meaning (OPS
   below, whose names nativeexpr.py reads through expr_ops()); a program with anything else is
   never built, and the expression runs in NumPy. Transcendentals come from vmath.h; the rarer
   trigonometric and hyperbolic ops call libm per value. */
#ifndef GRAPHOPT_EXPRVM_H
#define GRAPHOPT_EXPRVM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vmath.h"

#define XB 256 /* values per register block: a few blocks stay in L1 */

#define EXPR_OPS(X) \
    X(add) X(sub) X(mul) X(div) X(max) X(min) X(pow) X(eq) X(lt) X(le) X(gt) X(ge) X(and) X(or) X(xor) \
    X(neg) X(abs) X(relu) X(exp) X(log) X(sqrt) X(recip) X(floor) X(ceil) X(round) X(sign) X(tanh) \
    X(sigmoid) X(erf) X(softplus) X(not) X(isnan) X(sin) X(cos) X(tan) X(asin) X(acos) X(atan) X(sinh) \
    X(cosh) X(asinh) X(acosh) X(atanh) X(select) X(tobool) X(copy) X(square) X(cube)

#define X_ENUM(name) XOP_##name,
enum { EXPR_OPS(X_ENUM) XOP_COUNT };
#undef X_ENUM
#define X_NAME(name) #name,
static const char* const XOP_NAMES[] = {EXPR_OPS(X_NAME)};
#undef X_NAME

enum { XP_IN, XP_CONST, XP_COMP, XP_OUT, XP_INSTR, XP_HEAD };

/* An activation of in0 alone that a program spells out (xprog_parse recognises it), run as
   one function in registers, to the same bits as the program's instructions one by one. */
enum { XACT_NONE, XACT_HSIG, XACT_HSWISH, XACT_SIGMOID, XACT_SILU, XACT_GELU };
typedef struct {
    int kind, div; /* div: HSIG's scale divides (in0 / k0) instead of multiplying */
    float k[4];    /* HSIG: min(max(in0 * k0 + k1, k2), k3), k2 and k3 not NaN;
                      GELU: (in0 * k0) * (k1 + erf(in0 * k2)) */
} xact;

typedef struct {
    int n_in, n_const, n_comp, n_out, n_instr, n_regs;
    const int32_t *in_kind, *out_reg, *out_kind, *code;
    const float* cval;
    xact act;
} xprog;

static void xact_recognise(xprog* x);

/* parse and check a program (every register in range, every op known); 0 on success */
static int xprog_parse(const int32_t* p, long len, xprog* x)
{
    if (len < XP_HEAD) return -1;
    x->n_in = p[XP_IN], x->n_const = p[XP_CONST], x->n_comp = p[XP_COMP], x->n_out = p[XP_OUT];
    x->n_instr = p[XP_INSTR];
    if (x->n_in < 0 || x->n_const < 0 || x->n_comp < 0 || x->n_out < 1 || x->n_instr < 0 || x->n_in > 64
        || x->n_out > 64 || x->n_comp > 4096 || x->n_const > 4096)
        return -1;
    x->n_regs = x->n_in + x->n_const + x->n_comp;
    long need = XP_HEAD + x->n_in + 2L * x->n_out + x->n_const + 5L * x->n_instr;
    if (len != need) return -1;
    x->in_kind = p + XP_HEAD;
    x->out_reg = x->in_kind + x->n_in;
    x->out_kind = x->out_reg + x->n_out;
    x->cval = (const float*)(x->out_kind + x->n_out);
    x->code = (const int32_t*)(x->cval + x->n_const);
    for (int i = 0; i < x->n_in; i++)
        if (x->in_kind[i] != 0 && x->in_kind[i] != 1) return -1;
    for (int i = 0; i < x->n_out; i++)
        if (x->out_reg[i] < 0 || x->out_reg[i] >= x->n_regs || (x->out_kind[i] != 0 && x->out_kind[i] != 1)) return -1;
    int first = x->n_in + x->n_const;
    for (int k = 0; k < x->n_instr; k++) {
        const int32_t* c = x->code + 5 * k;
        if (c[0] < 0 || c[0] >= XOP_COUNT || c[1] < first || c[1] >= x->n_regs) return -1;
        for (int j = 2; j < 5; j++)
            if (c[j] < 0 || c[j] >= x->n_regs) return -1;
    }
    xact_recognise(x);
    return 0;
}

/* constant operand r's value (1), or 0 when r is not a constant register */
static int xact_const(const xprog* x, int r, float* v)
{
    if (r < x->n_in || r >= x->n_in + x->n_const) return 0;
    *v = x->cval[r - x->n_in];
    return 1;
}

/* what instruction k's operand f (2 or 3) reads: -1 in0, -2 a constant (*v), else the instruction
   that last wrote its register before k */
static int xact_operand(const xprog* x, int k, int f, float* v)
{
    const int r = x->code[5 * k + f];
    if (r == 0) return -1;
    if (xact_const(x, r, v)) return -2;
    for (int i = k - 1; i >= 0; i--)
        if (x->code[5 * i + 1] == r) return i;
    return -3; /* another input: never an activation of in0 */
}

/* instruction k is op(in0, constant) or op(constant, in0) (op commutes): the constant, 1 */
static int xact_in0_const(const xprog* x, int k, int op, float* v)
{
    float c;
    if (k < 0 || x->code[5 * k] != op) return 0;
    int a = xact_operand(x, k, 2, &c), b = xact_operand(x, k, 3, v);
    if (a == -1 && b == -2) return 1;
    *v = c;
    return a == -2 && b == -1;
}

/* GELU as graphopt/expr.py writes it, its five instructions in whatever order:
   mul(mul(k0, in0), add(k1, erf(mul(in0, k2)))), each product and sum either way round */
static void xact_gelu(const xprog* x, xact* a)
{
    const int last = x->n_instr - 1;
    float c;
    if (x->n_instr != 5 || x->code[5 * last] != XOP_mul) return;
    for (int side = 0; side < 2; side++) {
        int h = xact_operand(x, last, 2 + side, &c), s = xact_operand(x, last, 3 - side, &c);
        if (h < 0 || s < 0 || !xact_in0_const(x, h, XOP_mul, &a->k[0]) || x->code[5 * s] != XOP_add) continue;
        for (int t = 0; t < 2; t++) {
            int e = xact_operand(x, s, 2 + t, &c), k1 = xact_operand(x, s, 3 - t, &a->k[1]);
            if (e < 0 || k1 != -2 || x->code[5 * e] != XOP_erf) continue;
            if (xact_in0_const(x, xact_operand(x, e, 2, &c), XOP_mul, &a->k[2])) {
                a->kind = XACT_GELU;
                return;
            }
        }
    }
}

/* x->act: the activation the program is, where it is one of XACT_* instruction for instruction
   (SiLU's sigmoid then mul, HardSwish's div/mul, add, max, min, mul: the forms graphopt/expr.py
   writes), each step reading the one before; anything else stays XACT_NONE and runs on the VM */
static void xact_recognise(xprog* x)
{
    xact a = {XACT_NONE, 0, {0}};
    x->act = a;
    if (x->n_in != 1 || x->n_out != 1 || x->in_kind[0] || x->out_kind[0] || x->n_instr < 1 || x->n_instr > 5
        || x->out_reg[0] != x->code[5 * (x->n_instr - 1) + 1])
        return;
    const int32_t* c = x->code;
    const int n = x->n_instr;
#define XI(k, f) c[5 * (k) + (f)] /* f: 0 op, 1 dst, 2 a, 3 b */
    /* a last mul of in0 and the step before it: SiLU, HardSwish */
    const int gated = n >= 2 && XI(n - 1, 0) == XOP_mul
                      && ((XI(n - 1, 2) == 0 && XI(n - 1, 3) == XI(n - 2, 1))
                          || (XI(n - 1, 3) == 0 && XI(n - 1, 2) == XI(n - 2, 1)));
    const int body = n - gated;
    if (body == 1 && XI(0, 0) == XOP_sigmoid && XI(0, 2) == 0) {
        a.kind = gated ? XACT_SILU : XACT_SIGMOID;
    } else if (body == 4) {
        /* in0 * k0 (either side) or in0 / k0, + k1 (either side), max(t, k2), min(t, k3) */
        int ok = (XI(0, 0) == XOP_mul && ((XI(0, 2) == 0 && xact_const(x, XI(0, 3), &a.k[0]))
                                          || (XI(0, 3) == 0 && xact_const(x, XI(0, 2), &a.k[0]))))
                 || (XI(0, 0) == XOP_div && XI(0, 2) == 0 && xact_const(x, XI(0, 3), &a.k[0]));
        a.div = XI(0, 0) == XOP_div;
        ok = ok && XI(1, 0) == XOP_add
             && ((XI(1, 2) == XI(0, 1) && xact_const(x, XI(1, 3), &a.k[1]))
                 || (XI(1, 3) == XI(0, 1) && xact_const(x, XI(1, 2), &a.k[1])));
        ok = ok && XI(2, 0) == XOP_max && XI(2, 2) == XI(1, 1) && xact_const(x, XI(2, 3), &a.k[2]);
        ok = ok && XI(3, 0) == XOP_min && XI(3, 2) == XI(2, 1) && xact_const(x, XI(3, 3), &a.k[3]);
        if (ok && a.k[2] == a.k[2] && a.k[3] == a.k[3]) a.kind = gated ? XACT_HSWISH : XACT_HSIG;
    }
#undef XI
    if (!a.kind) xact_gelu(x, &a);
    x->act = a;
}

/* HSIG's steps: with k2, k3 not NaN, NumPy's maximum(t, k2) is k2 > t ? k2 : t (NaN stays t, and
   t == k2 keeps t, as -0.0 against 0.0 does), minimum(t, k3) likewise */
static inline v16 xact_hsig(const xact* a, v16 v)
{
    v16 t = a->div ? v / a->k[0] : v * a->k[0];
    VROUNDED(t); /* the product rounded, as the VM's mul instruction: never an FMA with the add */
    t = t + a->k[1];
    const v16 k2 = vsplat(a->k[2]), k3 = vsplat(a->k[3]);
    t = vsel(k2 > t, k2, t);
    return vsel(k3 < t, k3, t);
}

static inline v16 xact_gelu_v(const xact* a, v16 v)
{
    v16 u = v * a->k[2], h = v * a->k[0];
    return h * (a->k[1] + v_erf(u));
}

/* the recognised activation of one vector */
static inline __attribute__((always_inline)) v16 xact_apply(const xact* a, v16 v)
{
    switch (a->kind) {
    case XACT_HSIG: return xact_hsig(a, v);
    case XACT_HSWISH: return v * xact_hsig(a, v);
    case XACT_SIGMOID: return v_sigmoid(v);
    case XACT_SILU: return v * v_sigmoid(v);
    case XACT_GELU: return xact_gelu_v(a, v);
    }
    return v;
}

/* dst[i] = act(src[i] + bias) for n values (dst may be src); bias NULL: none */
static void xact_run(const xact* a, const float* src, float* dst, long n, const float* bias)
{
    const v16 b = vsplat(bias ? *bias : 0.0f);
    long i = 0;
#define XACT_LOOP(expr)                                                 \
    for (; i + VL <= n; i += VL) {                                      \
        v16 v = *(const v16u*)(src + i);                                \
        if (bias) v = v + b;                                            \
        *(v16u*)(dst + i) = (expr);                                     \
    }                                                                   \
    break;
    switch (a->kind) { /* one loop per kind, so that no switch runs per vector */
    case XACT_HSIG: XACT_LOOP(xact_hsig(a, v))
    case XACT_HSWISH: XACT_LOOP(v * xact_hsig(a, v))
    case XACT_SIGMOID: XACT_LOOP(v_sigmoid(v))
    case XACT_SILU: XACT_LOOP(v * v_sigmoid(v))
    case XACT_GELU: XACT_LOOP(xact_gelu_v(a, v))
    }
#undef XACT_LOOP
    if (i < n) {
        v16 v = {0};
        memcpy(&v, src + i, sizeof(float) * (n - i));
        if (bias) v = v + b;
        v = xact_apply(a, v);
        memcpy(dst + i, &v, sizeof(float) * (n - i));
    }
}

/* floats of scratch one thread needs: the constants, the computed registers and a staging
   block per input */
static inline long xprog_scratch(const xprog* x) { return (long)(x->n_const + x->n_comp + x->n_in) * XB; }

/* fill the constant blocks of a thread's scratch (once per run of blocks) */
static void xprog_fill_consts(const xprog* x, float* scratch)
{
    for (int k = 0; k < x->n_const; k++)
        for (int i = 0; i < XB; i++) scratch[(long)k * XB + i] = x->cval[k];
}

#define VLOOP(expr)                                             \
    for (int i = 0; i < nv; i += VL) {                          \
        v16 A = *(const v16u*)(a + i), B = *(const v16u*)(b + i); \
        (void)A; (void)B;                                       \
        *(v16u*)(d + i) = (expr);                               \
    }
#define SLOOP(expr)                  \
    for (int i = 0; i < nv; i++) {   \
        float A = a[i];              \
        (void)b;                     \
        d[i] = (expr);               \
    }

static inline v16 vbool(v16i m) { return vsel(m, vsplat(1.0f), vsplat(0.0f)); }

/* one instruction over nv values (a multiple of VL); d may be a or b */
static void xop(int op, float* d, const float* a, const float* b, const float* c, int nv)
{
    switch (op) {
    case XOP_add: VLOOP(A + B) break;
    case XOP_sub: VLOOP(A - B) break;
    case XOP_mul: VLOOP(A * B) break;
    case XOP_div: VLOOP(A / B) break;
    case XOP_max: VLOOP(vmax(A, B)) break;
    case XOP_min: VLOOP(vmin(A, B)) break;
    case XOP_pow: for (int i = 0; i < nv; i++) d[i] = powf(a[i], b[i]); break;
    case XOP_eq: VLOOP(vbool(A == B)) break;
    case XOP_lt: VLOOP(vbool(A < B)) break;
    case XOP_le: VLOOP(vbool(A <= B)) break;
    case XOP_gt: VLOOP(vbool(A > B)) break;
    case XOP_ge: VLOOP(vbool(A >= B)) break;
    case XOP_and: VLOOP(vbool((A != 0.0f) & (B != 0.0f))) break;
    case XOP_or: VLOOP(vbool((A != 0.0f) | (B != 0.0f))) break;
    case XOP_xor: VLOOP(vbool((A != 0.0f) ^ (B != 0.0f))) break;
    case XOP_neg: VLOOP(-A) break;
    case XOP_abs: VLOOP((v16)((v16i)A & 0x7fffffff)) break;
    case XOP_relu: VLOOP(vsel(A != A, A, vsel(A >= 0.0f, A, vsplat(0.0f)))) break;
    case XOP_exp: VLOOP(v_exp(A)) break;
    case XOP_log: VLOOP(v_log(A)) break;
    case XOP_sqrt: SLOOP(sqrtf(A)) break;
    case XOP_recip: VLOOP(1.0f / A) break;
    case XOP_floor: SLOOP(floorf(A)) break;
    case XOP_ceil: SLOOP(ceilf(A)) break;
    case XOP_round: SLOOP(nearbyintf(A)) break;
    case XOP_sign: VLOOP(vsel(A > 0.0f, vsplat(1.0f), vsel(A < 0.0f, vsplat(-1.0f), A))) break;
    case XOP_tanh: VLOOP(v_tanh(A)) break;
    case XOP_sigmoid: VLOOP(v_sigmoid(A)) break;
    case XOP_erf: VLOOP(v_erf(A)) break;
    case XOP_softplus: VLOOP(v_softplus(A)) break;
    case XOP_not: VLOOP(vbool(A == 0.0f)) break;
    case XOP_isnan: VLOOP(vbool(A != A)) break;
    case XOP_sin: SLOOP(sinf(A)) break;
    case XOP_cos: SLOOP(cosf(A)) break;
    case XOP_tan: SLOOP(tanf(A)) break;
    case XOP_asin: SLOOP(asinf(A)) break;
    case XOP_acos: SLOOP(acosf(A)) break;
    case XOP_atan: SLOOP(atanf(A)) break;
    case XOP_sinh: SLOOP(sinhf(A)) break;
    case XOP_cosh: SLOOP(coshf(A)) break;
    case XOP_asinh: SLOOP(asinhf(A)) break;
    case XOP_acosh: SLOOP(acoshf(A)) break;
    case XOP_atanh: SLOOP(atanhf(A)) break;
    case XOP_select:
        for (int i = 0; i < nv; i += VL) {
            v16 C = *(const v16u*)(a + i);
            *(v16u*)(d + i) = vsel(C != 0.0f, *(const v16u*)(b + i), *(const v16u*)(c + i));
        }
        break;
    case XOP_tobool: VLOOP(vbool(A != 0.0f)) break;
    case XOP_copy: if (d != a) memcpy(d, a, sizeof(float) * nv); break;
    case XOP_square: VLOOP(A * A) break;
    case XOP_cube: VLOOP(A * A * A) break;
    }
}

/* One block of n values (n <= XB). in[i]: input i's values for this block, in_step[i] 1
   (consecutive) or 0 (one value repeated); out[j]: where output j's n values go. scratch:
   xprog_scratch floats, constants filled. */
static void xprog_block(const xprog* x, float* scratch, int n, const void* const* in, const int* in_step,
                        void* const* out)
{
    if (x->act.kind && in_step[0]) { /* one float input read in order, one float output */
        xact_run(&x->act, in[0], out[0], n, NULL);
        return;
    }
    const float* R[x->n_regs];
    const int nv = (n + VL - 1) / VL * VL;
    float* comp = scratch + (long)x->n_const * XB;
    float* stage = comp + (long)x->n_comp * XB;
    for (int i = 0; i < x->n_in; i++) {
        float* s = stage + (long)i * XB;
        if (x->in_kind[i] == 0 && in_step[i] == 1 && nv == n) {
            R[i] = in[i]; /* read in place */
            continue;
        }
        if (x->in_kind[i] == 0) {
            const float* p = in[i];
            if (in_step[i]) {
                memcpy(s, p, sizeof(float) * n);
                for (int k = n; k < nv; k++) s[k] = 0.0f;
            } else {
                for (int k = 0; k < nv; k++) s[k] = p[0];
            }
        } else {
            const uint8_t* p = in[i];
            for (int k = 0; k < nv; k++) s[k] = (k < n && p[in_step[i] ? k : 0]) ? 1.0f : 0.0f;
        }
        R[i] = s;
    }
    for (int k = 0; k < x->n_const; k++) R[x->n_in + k] = scratch + (long)k * XB;
    const int first = x->n_in + x->n_const;
    for (int k = 0; k < x->n_comp; k++) R[first + k] = comp + (long)k * XB;
    /* one float output made by the last instruction: it writes the output itself (even over an
       input read in place: each vector is read before it is written) */
    const int direct = x->n_out == 1 && x->out_kind[0] == 0 && nv == n && x->n_instr > 0
                       && x->code[5 * (x->n_instr - 1) + 1] == x->out_reg[0];
    for (int k = 0; k < x->n_instr; k++) {
        const int32_t* c = x->code + 5 * k;
        float* d = direct && k == x->n_instr - 1 ? out[0] : (float*)R[c[1]];
        xop(c[0], d, R[c[2]], R[c[3]], R[c[4]], nv);
    }
    if (direct) return;
    for (int j = 0; j < x->n_out; j++) {
        const float* r = R[x->out_reg[j]];
        if (x->out_kind[j] == 0) {
            if (out[j] != r) memcpy(out[j], r, sizeof(float) * n);
        } else {
            uint8_t* o = out[j];
            for (int k = 0; k < n; k++) o[k] = r[k] != 0.0f;
        }
    }
}

/* a contiguous run of n float32 values in place: in0 = out0 = v, the program's other inputs
   absent (a conv epilogue of the accumulator alone) */
static void xprog_inplace(const xprog* x, float* scratch, float* v, long n)
{
    if (x->act.kind) {
        xact_run(&x->act, v, v, n, NULL);
        return;
    }
    const int step[1] = {1};
    for (long i = 0; i < n; i += XB) {
        int m = n - i < XB ? (int)(n - i) : XB;
        const void* in[1] = {v + i};
        void* out[1] = {v + i};
        xprog_block(x, scratch, m, in, step, out);
    }
}

/* rows of len values at v (one after another), each plus its bias (NULL: none), then the program,
   in place (a conv's output rows or tile: acc + bias, then the epilogue); a recognised activation
   does both in one pass over each row */
static void xprog_rows_inplace(const xprog* x, float* scratch, float* v, int rows, long len, const float* bias)
{
    if (x->act.kind) {
        for (int m = 0; m < rows; m++) xact_run(&x->act, v + m * len, v + m * len, len, bias ? bias + m : NULL);
        return;
    }
    if (bias)
        for (int m = 0; m < rows; m++)
            for (long i = 0; i < len; i++) v[m * len + i] += bias[m];
    xprog_inplace(x, scratch, v, (long)rows * len);
}

#endif

/* Vector math on 16 floats (GCC generic vectors): exp, log, tanh, erf and the helpers they
   share, for the native expression programs (exprvm.h). Each is a classic single-precision
   approximation (Cephes' expf/logf/tanhf polynomials, the rational erf that Eigen and XLA use),
   written branch-free so that GCC keeps it in vector registers; none calls libm per element.
   They are within a few float32 ulps of the NumPy/SciPy kernels that define the ops (checked in
   tests/plugins/cpu/test_native_expr.py over dense grids and the special values), and keep
   NumPy's answers for inf, -inf and NaN. */
#ifndef GRAPHOPT_VMATH_H
#define GRAPHOPT_VMATH_H

#include <stdint.h>

#ifndef VL
#define VL 16
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
#endif
typedef int32_t v16i __attribute__((vector_size(64)));

/* a in every lane, as it is (-0.0 too: (v16){0} + a would be a scalar add first, and +0.0) */
static inline v16 vsplat(float a) { return (v16){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }
static inline v16 vsel(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
/* NumPy's maximum/minimum: NaN if either is NaN, else a >= b ? a : b */
static inline v16 vmax(v16 a, v16 b) { return vsel(a != a, a, vsel(b != b, b, vsel(a >= b, a, b))); }
static inline v16 vmin(v16 a, v16 b) { return vsel(a != a, a, vsel(b != b, b, vsel(a <= b, a, b))); }
static inline v16 vfloor_small(v16 x) /* |x| < 2^31 */
{
    v16 t = __builtin_convertvector(__builtin_convertvector(x, v16i), v16);
    return t - vsel(t > x, vsplat(1.0f), vsplat(0.0f));
}

/* 1 where any lane of m is set (a rarely taken slow path's test) */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline int vany(v16i m) { return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0; }
#elif defined(__AVX__)
#include <immintrin.h>
static inline int vany(v16i m)
{
    const __m256i* h = (const __m256i*)&m;
    return !_mm256_testz_si256(h[0] | h[1], h[0] | h[1]);
}
#else
static inline int vany(v16i m)
{
    int32_t r = 0;
    for (int i = 0; i < VL; i++) r |= m[i];
    return r != 0;
}
#endif

/* v as it stands, rounded to float32: GCC contracts a * b + c into one FMA (one rounding) unless
   the product is a value it cannot see through */
#if defined(__AVX512F__) /* v in one register */
#define VROUNDED(v) __asm__("" : "+v"(v))
#else
#define VROUNDED(v) __asm__ volatile("" : : "g"(&(v)) : "memory")
#endif

/* the first n lanes (1 <= n <= VL) loaded (the rest 0) or stored; nothing past them is touched */
#if defined(__AVX512F__)
static inline v16 vload_n(const float* p, int n) { return (v16)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
static inline void vstore_n(float* p, v16 v, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v); }
#else
static inline v16 vload_n(const float* p, int n)
{
    v16 v = {0};
    __builtin_memcpy(&v, p, sizeof(float) * n);
    return v;
}
static inline void vstore_n(float* p, v16 v, int n) { __builtin_memcpy(p, &v, sizeof(float) * n); }
#endif

/* a running max that remembers NaN on the side: vmax_acc(acc, v, &nan) is the larger per lane
   (NaN lanes of v noted in nan, not compared), vmax_done(acc, nan) the max with its NaN lanes
   NaN: NumPy's answer, in two instructions a tap where vmax takes six */
#if defined(__AVX512F__)
typedef __mmask16 vnan;
static inline v16 vmax_acc(v16 acc, v16 v, vnan* nan)
{
    *nan |= _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q);
    return (v16)_mm512_max_ps((__m512)acc, (__m512)v);
}
static inline v16 vmax_done(v16 acc, vnan nan) { return (v16)_mm512_mask_mov_ps((__m512)acc, nan, (__m512)vsplat(NAN)); }
#else
typedef v16i vnan;
static inline v16 vmax_acc(v16 acc, v16 v, vnan* nan)
{
    *nan |= v != v;
    return vsel(v > acc, v, acc);
}
static inline v16 vmax_done(v16 acc, vnan nan) { return vsel(nan, vsplat(NAN), acc); }
#endif

/* lanes [lo, hi) (0 <= lo < hi <= VL) of p[i * step] for step 1 or 2, the other lanes `fill`;
   nothing outside those lanes' elements is read (under AVX-512 a masked load: the lanes outside
   may lie past either end of the array) */
#if defined(__AVX512F__)
static inline v16 vload_lanes(const float* p, int step, int lo, int hi, v16 fill)
{
    const unsigned m = ((1u << hi) - 1) & ~((1u << lo) - 1);
    if (step == 1) return (v16)_mm512_mask_loadu_ps((__m512)fill, (__mmask16)m, p);
    const uint64_t e = (((1ull << (2 * hi)) - 1) & ~((1ull << (2 * lo)) - 1)) & 0x55555555ull; /* even bits */
    const v16i even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    v16 a0 = (v16)_mm512_mask_loadu_ps((__m512)fill, (__mmask16)(e & 0xffff), p);
    v16 a1 = (v16)_mm512_mask_loadu_ps((__m512)fill, (__mmask16)(e >> 16), p + VL);
    return __builtin_shuffle(a0, a1, even);
}
#else
static inline v16 vload_lanes(const float* p, int step, int lo, int hi, v16 fill)
{
    v16 v = fill;
    for (int i = lo; i < hi; i++) v[i] = p[i * step];
    return v;
}
#endif

/* dst[i] = src[i * step] for i < n, in vectors for steps 1 and 2 (a conv's phase planes); reads
   nothing past src[(n - 1) * step] */
static inline void vcopy_strided(float* dst, const float* src, long n, long step)
{
    long i = 0;
    if (step == 1) {
        for (; i + VL <= n; i += VL) *(v16u*)(dst + i) = *(const v16u*)(src + i);
        if (i < n) vstore_n(dst + i, vload_n(src + i, n - i), n - i);
    } else if (step == 2) {
        const v16i even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
        for (; i + VL < n; i += VL) /* src[2i + 31] is read: n > i + 16 keeps it in range */
            *(v16u*)(dst + i) = __builtin_shuffle(*(const v16u*)(src + 2 * i), *(const v16u*)(src + 2 * i + VL), even);
        int m = n - i, span = 2 * m - 1; /* 1 .. 16 values left, from span source floats */
        v16 lo = vload_n(src + 2 * i, span < VL ? span : VL);
        v16 hi = span > VL ? vload_n(src + 2 * i + VL, span - VL) : (v16){0};
        vstore_n(dst + i, __builtin_shuffle(lo, hi, even), m);
    } else {
        for (; i < n; i++) dst[i] = src[i * step];
    }
}

#define EXP_FAST_LIMIT 87.0f

/* exp(x - n ln 2) for n = round(x / ln 2): Cephes' expf polynomial on the reduced argument */
static inline v16 exp_reduced(v16 x, v16 n)
{
    v16 r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v16 p = vsplat(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    return p * (r * r) + r + 1.0f;
}

/* exp for |x| <= EXP_FAST_LIMIT: round(x / ln 2) by the 1.5 * 2^23 + 127 trick, whose low bits
   are then 2^n's exponent field as they stand */
static inline v16 v_exp_fast(v16 x)
{
    const float magic = 12583039.0f; /* 1.5 * 2^23 + 127 */
    v16 t = x * 1.44269504088896341f + magic;
    v16 n = t - magic;
    return exp_reduced(x, n) * (v16)((v16i)t << 23);
}

/* exp over the whole float range: 2^n in two factors, so that n from -150 to 128 needs no
   out-of-range exponent and a subnormal result is rounded once; inf, -inf and NaN as NumPy */
static inline v16 v_exp_full(v16 x)
{
    const v16 hi = vsplat(88.72283935546875f), lo = vsplat(-103.97208404541015625f);
    v16 xc = vsel(x > hi, hi, vsel(x < lo, lo, x));
    xc = vsel(x != x, vsplat(0.0f), xc);
    v16 n = vfloor_small(xc * 1.44269504088896341f + 0.5f);
    v16 y = exp_reduced(xc, n);
    v16i ni = __builtin_convertvector(n, v16i), n1 = ni >> 1, n2 = ni - n1;
    y = y * (v16)((n1 + 127) << 23) * (v16)((n2 + 127) << 23);
    y = vsel(x > hi, vsplat(__builtin_inff()), y);
    y = vsel(x < lo, vsplat(0.0f), y);
    return vsel(x != x, x, y);
}

static inline v16 v_exp(v16 x)
{
    v16 a = (v16)((v16i)x & 0x7fffffff);
    if (__builtin_expect(vany(~(a <= EXP_FAST_LIMIT)), 0)) return v_exp_full(x); /* NaN fails <= too */
    return v_exp_fast(x);
}

static inline v16 v_log(v16 x)
{
    const v16i sub = x < 1.17549435e-38f; /* subnormal (or zero, negative, handled below) */
    v16 xs = vsel(sub, x * 8388608.0f, x);
    v16i bits = (v16i)xs;
    v16i e = ((bits >> 23) & 0xff) - 126;
    e = e - (sub & 23);
    v16 m = (v16)((bits & 0x007fffff) | 0x3f000000); /* [0.5, 1) */
    v16i small = m < 0.707106781186547524f;
    e = e + small; /* small is -1 where true */
    m = m - 1.0f + vsel(small, m, vsplat(0.0f));
    v16 z = m * m;
    v16 y = vsplat(7.0376836292E-2f);
    y = y * m - 1.1514610310E-1f;
    y = y * m + 1.1676998740E-1f;
    y = y * m - 1.2420140846E-1f;
    y = y * m + 1.4249322787E-1f;
    y = y * m - 1.6668057665E-1f;
    y = y * m + 2.0000714765E-1f;
    y = y * m - 2.4999993993E-1f;
    y = y * m + 3.3333331174E-1f;
    y = y * m * z;
    v16 fe = __builtin_convertvector(e, v16);
    y = y + fe * -2.12194440e-4f;
    y = y - 0.5f * z;
    v16 r = m + y;
    r = r + fe * 0.693359375f;
    r = vsel(x == 0.0f, vsplat(-__builtin_inff()), r);
    r = vsel(x == __builtin_inff(), x, r);
    r = vsel(x < 0.0f, vsplat(__builtin_nanf("")), r);
    return vsel(x != x, x, r);
}

static inline v16 v_tanh(v16 x)
{
    const v16i sign = (v16i)x & (int32_t)0x80000000;
    v16 a = (v16)((v16i)x & 0x7fffffff);
    v16 z = x * x;
    v16 p = vsplat(-5.70498872745E-3f);
    p = p * z + 2.06390887954E-2f;
    p = p * z - 5.37397155531E-2f;
    p = p * z + 1.33314422036E-1f;
    p = p * z - 3.33332819422E-1f;
    v16 small = p * z * x + x;
    /* beyond 13 ln 2 = 9.0109 tanh rounds to 1.0f; the formula there gives 1 - 2^-24 (so GELU's
       1 + tanh kept a residue: -3.9e-7 at x = -12.9, where the result is -0), hence exactly 1.0f;
       clamping at 9 keeps exp in its fast range */
    v16 ac = vsel(a > 9.0f, vsplat(9.0f), a);
    v16 big = vsel(a > 9.01091f, vsplat(1.0f), 1.0f - 2.0f / (v_exp_fast(ac + ac) + 1.0f));
    big = (v16)((v16i)big | sign);
    return vsel(x != x, x, vsel(a < 0.625f, small, big));
}

/* 1 / (1 + exp(-x)); beyond x = 87 the result is 1.0f, below -87 it is under 1.7e-38 (returned as
   sigmoid(-87) down to -103.97, where float32's exp underflows, and 0 below, as NumPy's) */
/* 1 / d for d >= 1: AVX-512's 14-bit reciprocal and one Newton step (error under 2^-27 before the
   last rounding, so within 1 ulp of the division) instead of a division, several times its cost */
static inline v16 v_recip_ge1(v16 d)
{
#if defined(__AVX512F__)
    v16 r = (v16)_mm512_rcp14_ps((__m512)d);
    v16 e = 1.0f - d * r; /* contracted to one FMA: the residual exactly */
    return r + r * e;
#else
    return 1.0f / d;
#endif
}

static inline v16 v_sigmoid(v16 x)
{
#if defined(__AVX512F__)
    /* the same exp(-c) for c in [-87, 87] (round to nearest as the magic constant does, 2^n exact),
       with 2^n by scalef, which needs no clamp below: exp(-c) for c up to 104 goes to 0 through it.
       max_ps(k, x) and min_ps(k, x) return x when it is NaN, and NaN then runs through to r */
    const __m512 c = _mm512_min_ps(_mm512_set1_ps(104.0f), _mm512_max_ps(_mm512_set1_ps(-EXP_FAST_LIMIT), (__m512)x));
    const v16 a = -(v16)c;
    const v16 n = (v16)_mm512_roundscale_ps((__m512)(a * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const v16 r = v_recip_ge1(1.0f + (v16)_mm512_scalef_ps((__m512)exp_reduced(a, n), (__m512)n));
    return vsel(x < -103.97208404541015625f, vsplat(0.0f), r);
#else
    v16 c = vsel(x > EXP_FAST_LIMIT, vsplat(EXP_FAST_LIMIT), vsel(x < -EXP_FAST_LIMIT, vsplat(-EXP_FAST_LIMIT), x));
    v16 r = v_recip_ge1(1.0f + v_exp_fast(-c));
    return vsel(x != x, x, vsel(x < -103.97208404541015625f, vsplat(0.0f), r));
#endif
}

static inline v16 v_erf(v16 x)
{
    v16 c = vsel(x > 4.0f, vsplat(4.0f), vsel(x < -4.0f, vsplat(-4.0f), x));
    v16 x2 = c * c;
    v16 p = vsplat(-2.72614225801306e-10f);
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 - 2.10102402082508e-06f;
    p = p * x2 - 5.69250639462346e-05f;
    p = p * x2 - 7.34990630326855e-04f;
    p = p * x2 - 2.95459980854025e-03f;
    p = p * x2 - 1.60960333262415e-02f;
    p = p * c;
    v16 q = vsplat(-1.45660718464996e-05f);
    q = q * x2 - 2.13374055278905e-04f;
    q = q * x2 - 1.68282697438203e-03f;
    q = q * x2 - 7.37332916720468e-03f;
    q = q * x2 - 1.42647390514189e-02f;
    return vsel(x != x, x, p / q);
}

/* log(1 + u) for u >= 0, accurate for small u (w - 1 is exact, so the ratio corrects log's rounding) */
static inline v16 v_log1p_pos(v16 u)
{
    v16 w = 1.0f + u;
    v16 d = w - 1.0f;
    v16 r = v_log(w) * (u / vsel(d == 0.0f, vsplat(1.0f), d));
    r = vsel(d == 0.0f, u, r);
    return vsel(u == __builtin_inff(), u, r);
}

/* log(1 + exp(x)) as NumPy's logaddexp(0, x): max(x, 0) + log1p(exp(-|x|)) */
static inline v16 v_softplus(v16 x)
{
    v16 a = (v16)((v16i)x & 0x7fffffff);
    v16 r = vsel(x > 0.0f, x, vsplat(0.0f)) + v_log1p_pos(v_exp(-a));
    return vsel(x != x, x, r);
}

#endif

"""float16 / bfloat16 <-> float32 conversions for kernels that keep 16-bit floats as
``unsigned short``.

No kernel includes ``cuda_fp16.h`` or ``cuda_bf16.h`` (NVRTC has no standard
headers, and the emulation header would have to mirror them): 16-bit float
tensors are stored as their bit patterns. On a device the conversions are
single ``cvt`` instructions; the host twin is the same conversion in software,
bit-exact (round to nearest even, subnormals, infinities, NaN). A bfloat16 is
the top half of a float32, so widening it is a shift everywhere; narrowing is
``cvt.rn.bf16.f32`` on sm_80+ and the software rounding elsewhere (what
ml_dtypes does: a NaN becomes the quiet NaN 0x7fc0 of its sign; a device's
``cvt`` gives its own canonical NaN).

>>> [h.name for h in HALF_HELPERS], [h.name for h in BF16_HELPERS]
(['go_h2f', 'go_f2h'], ['go_bf2f', 'go_f2bf'])
>>> HELPERS_OF["bfloat16"] == BF16_HELPERS
True
"""
from __future__ import annotations

from .kernel import Helper

HALF_HELPERS = (
    Helper("go_h2f", """\
__device__ __forceinline__ float go_h2f(unsigned short h) {
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else  // the same conversion in software (bit-exact)
    const unsigned sign = ((unsigned)h & 0x8000u) << 16, e = ((unsigned)h >> 10) & 0x1fu, m = (unsigned)h & 0x3ffu;
    if (e == 0) {  // zero or subnormal: m * 2^-24
        const float v = (float)m * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (e == 31) return __int_as_float((int)(sign | 0x7f800000u | (m << 13)));
    return __int_as_float((int)(sign | ((e + 112u) << 23) | (m << 13)));
#endif
}
"""),
    Helper("go_f2h", """\
__device__ __forceinline__ unsigned short go_f2h(float f) {  // round to nearest even
#if defined(__CUDA_ARCH__)
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else  // the same conversion in software (bit-exact)
    const unsigned x = (unsigned)__float_as_int(f);
    const unsigned sign = (x >> 16) & 0x8000u;
    const unsigned ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds past the largest half
    if (ax < 0x38800000u) {  // subnormal half (or zero)
        if (ax < 0x33000000u) return (unsigned short)sign;
        const unsigned m = (ax & 0x7fffffu) | 0x800000u;
        const int shift = 126 - (int)(ax >> 23);
        unsigned h = m >> shift;
        const unsigned rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) ++h;
        return (unsigned short)(sign | h);
    }
    unsigned h = ((ax - 0x38000000u) >> 13);
    const unsigned rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return (unsigned short)(sign | h);
#endif
}
"""),
)

BF16_HELPERS = (
    Helper("go_bf2f", """\
__device__ __forceinline__ float go_bf2f(unsigned short h) {  // exact: the top 16 bits of a float
    return __int_as_float((int)((unsigned)h << 16));
}
"""),
    Helper("go_f2bf", """\
__device__ __forceinline__ unsigned short go_f2bf(float f) {  // round to nearest even
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else  // the same conversion in software (bit-exact)
    const unsigned x = (unsigned)__float_as_int(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)(((x >> 16) & 0x8000u) | 0x7fc0u);  // NaN
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
#endif
}
"""),
)

# storage dtype -> (widen to float32, narrow from float32, helpers defining both)
HELPERS_OF = {"float16": HALF_HELPERS, "bfloat16": BF16_HELPERS}
CONVERSIONS = {"float16": ("go_h2f", "go_f2h"), "bfloat16": ("go_bf2f", "go_f2bf")}

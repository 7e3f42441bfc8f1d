/* One register tile of the dense convolution, included once per (MT, RV) by kernels.c:
   MT output channels x RV vectors of 16 consecutive flat output positions, accumulated
   over every input channel and kernel tap in the same order for every variant (so all
   variants give the same bits), then handed to store_tile. */
#define TILE_NAME2(a, b) conv_tile_##a##_##b
#define TILE_NAME(a, b) TILE_NAME2(a, b)

static void TILE_NAME(MT, RV)(const float* restrict x, int C, long cstride, const float* restrict wp, int K,
                              const int* restrict offs, int p0, float* restrict t)
{
    v16 acc[MT][RV];
    for (int m = 0; m < MT; m++)
        for (int r = 0; r < RV; r++) acc[m][r] = (v16){0};
    for (int c = 0; c < C; c++) {
        const float* xc = x + c * cstride + p0;
        const float* wc = wp + (long)c * K * MT;
        for (int k = 0; k < K; k++) {
            const float* xk = xc + offs[k];
            v16 v[RV];
            for (int r = 0; r < RV; r++) v[r] = *(const v16u*)(xk + r * VL);
            const float* wk = wc + k * MT;
            for (int m = 0; m < MT; m++) {
                /* a plain broadcast, which GCC folds into the FMA as a {1to16} memory operand: (v16){0} +
                   wk[m] was a scalar add and a vbroadcastss on the FMA ports (on Zen 4, 77 % of the FMA
                   peak instead of 90 %); the sums are the same bits (acc starts at +0.0) */
                v16 wv = vsplat(wk[m]);
                for (int r = 0; r < RV; r++) acc[m][r] += wv * v[r];
            }
        }
    }
    for (int m = 0; m < MT; m++)
        for (int r = 0; r < RV; r++) *(v16u*)(t + m * (RV * VL) + r * VL) = acc[m][r];
}

#undef TILE_NAME
#undef TILE_NAME2

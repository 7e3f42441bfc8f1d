/* The depthwise convolution (group == channels, one input channel per output), included by
   kernels.c after conv_job, store_tile and tile_epilogue. */
#ifndef GRAPHOPT_DEPTHWISE_H
#define GRAPHOPT_DEPTHWISE_H

/* Depthwise tiles: up to DW_RV vectors of a plane, for DW_CHANNELS channels per task (their
   epilogue and store run once for all). A plane of up to DW_RV vectors is one tile that may run
   past P, by less than a vector: into the next channel's plane or, for the last, into the
   planes' slack (native.py allocates PLANES_SLACK floats more); its extra values are never
   stored. x read in place has no slack: its tiles stay within P, the last one shifted back to
   end at P (recomputing a few values, to the same bits). */
#define DW_RV 6
#define DW_CHANNELS 8
#define PLANES_SLACK VL

static inline void depthwise_tiling(int P, int direct, int* rv, int* tiles)
{
    int nvec = (P + VL - 1) / VL;
    if (direct) { /* P >= VL (py_conv checks) */
        *rv = P / VL < DW_RV ? P / VL : DW_RV;
        *tiles = (P + *rv * VL - 1) / (*rv * VL);
        return;
    }
    *tiles = (nvec + DW_RV - 1) / DW_RV;
    *rv = (nvec + *tiles - 1) / *tiles;
}

static inline __attribute__((always_inline)) void depthwise_tile(const float* xc, const float* wo, const int* offs,
                                                                  int K, float* t, const int rv)
{
    v16 acc[DW_RV] = {{0}};
    for (int k = 0; k < K; k++) {
        v16 wv = (v16){0} + wo[k];
        const float* xk = xc + offs[k];
        for (int r = 0; r < rv; r++) acc[r] += wv * *(const v16u*)(xk + r * VL);
    }
    for (int r = 0; r < rv; r++) *(v16u*)(t + r * VL) = acc[r];
}

/* The depthwise conv's tasks (conv_tasks hands them over): DW_CHANNELS channels x one tile of
   a plane each; scratch is the epilogue program's (NULL without one), lo/hi the clamp. */
static void depthwise_tasks(const conv_job* j, long begin, long end, float* scratch, float lo, float hi)
{
    const long long* g = j->g;
    const int G = g[G_G], M = g[G_M], K = g[G_K], P = g[G_P], Wq = g[G_WQ], Wo = g[G_WO];
    const long cs = g[G_CSTRIDE], plane = g[G_HO] * g[G_WO];
    const float* src = j->planes ? j->planes : j->x;
    int rv, pb;
    depthwise_tiling(P, g[G_DIRECT], &rv, &pb);
    const int B = rv * VL, channels = G * M, cb = (channels + DW_CHANNELS - 1) / DW_CHANNELS;
    for (long task = begin; task < end; task++) {
        float t[DW_CHANNELS * DW_RV * VL];
        int jb = task % pb;
        long rest = task / pb;
        int o0 = (rest % cb) * DW_CHANNELS, n = rest / cb;
        int rows = channels - o0 < DW_CHANNELS ? channels - o0 : DW_CHANNELS;
        int p0 = jb * B, count = B;
        if (p0 + B > P) {
            if (pb > 1 || g[G_DIRECT]) p0 = P - B; /* shifted back */
            else count = P;                       /* one tile past P */
        }
        for (int m = 0; m < rows; m++) {
            int o = o0 + m;
            const float* xc = src + ((long)n * G + o / M) * cs + p0;
            const float* wo = j->w + (long)o * K;
            float* tm = t + m * B;
            switch (rv) { /* a constant count keeps the accumulators in registers */
            case 1: depthwise_tile(xc, wo, j->offs, K, tm, 1); break;
            case 2: depthwise_tile(xc, wo, j->offs, K, tm, 2); break;
            case 3: depthwise_tile(xc, wo, j->offs, K, tm, 3); break;
            case 4: depthwise_tile(xc, wo, j->offs, K, tm, 4); break;
            case 5: depthwise_tile(xc, wo, j->offs, K, tm, 5); break;
            default: depthwise_tile(xc, wo, j->offs, K, tm, 6); break;
            }
        }
        long yo = ((long)n * channels + o0) * plane;
        const float* bias = j->bias ? j->bias + o0 : NULL;
        if (scratch) {
            tile_epilogue(j, t, rows, B, bias, scratch);
            bias = NULL;
        }
        store_tile(t, rows, B, count, p0, Wq, Wo, bias, j->res ? j->res + yo : NULL, plane, lo, hi, j->y + yo);
    }
}

#endif

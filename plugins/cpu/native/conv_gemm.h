/* The dense convolution as one GEMM per group (sgemm.h's kernel, the weights packed once):
   what onnxruntime's MLAS and most CPU runtimes do for convs whose output plane is small.

   The register tiles (conv_tile.h) vectorize along a plane's flat positions: a 7x7 output
   plane is 63 flat positions (two 3x3 taps of padding per row), computed as tiles of 16 to 48,
   so up to half the work is dropped or recomputed, and each tile streams the whole weight
   block for only those few positions. Here the positions the conv reads are gathered once
   into a column matrix, col[c*K + k][oy*Wo + ox] = plane_c[oy*Wq + ox + offs[k]] (Ho runs of
   Wo floats per channel and tap, copied from the zero-padded phase planes fill_planes made;
   the ONNX weight [M][C][kh][kw] is already the GEMM's [M][C*K], packed into row panels once
   by pack_a), and y[M][Ho*Wo] = W[M][C*K] x col is one product per block of output channels,
   written straight into the NCHW output. A 1x1 stride-1 unpadded conv ("direct") needs no
   columns: x is the column matrix. Each task then applies bias and the epilogue to its rows
   while they are in cache, in the tiles' order ((acc + bias), then the program, or + residual
   and the clamp), so only the sum's order differs from the tiles (k-slices of 256). */
#ifndef GRAPHOPT_CONV_GEMM_H
#define GRAPHOPT_CONV_GEMM_H

typedef struct {
    const conv_job* j;
    float* col;  /* [N * G][C * K][plane], or NULL (direct) */
    long plane;  /* Ho * Wo */
    long mb;     /* output channels per task */
    long mblocks;
} cgemm_job;

/* one task per (image, group, input channel): its K rows of the column matrix */
static void im2col_tasks(void* ctx, long begin, long end)
{
    const cgemm_job* q = ctx;
    const conv_job* j = q->j;
    const long long* g = j->g;
    const long K = g[G_K], Ho = g[G_HO], Wo = g[G_WO], Wq = g[G_WQ], cs = g[G_CSTRIDE];
    for (long t = begin; t < end; t++) {
        const float* pc = j->planes + t * cs;
        float* dst = q->col + t * K * q->plane;
        for (long k = 0; k < K; k++) {
            const float* src = pc + j->offs[k];
            float* d = dst + k * q->plane;
            for (long oy = 0; oy < Ho; oy++) { /* rows of a few dozen floats: inline copies, not memcpy calls */
                const float* s = src + oy * Wq;
                float* o = d + oy * Wo;
                long x = 0;
                for (; x + VL <= Wo; x += VL) *(v16u*)(o + x) = *(const v16u*)(s + x);
                for (; x < Wo; x++) o[x] = s[x];
            }
        }
    }
}

/* bias and the epilogue over rows m of y (each `plane` long), in place */
static void rows_epilogue(const conv_job* j, float* y, const float* bias, const float* res, int rows, long plane,
                          float* scratch, float lo, float hi)
{
    if (scratch) { /* the tiles' epilogue: bias and a recognised activation in one pass */
        tile_epilogue(j, y, rows, (int)plane, bias, scratch);
        return;
    }
    const v16 vlo = vsplat(lo), vhi = vsplat(hi);
    for (int m = 0; m < rows; m++) {
        float b = bias ? bias[m] : 0.0f;
        const v16 vb = vsplat(b);
        float* ym = y + m * plane;
        const float* rm = res ? res + m * plane : NULL;
        long i = 0;
        for (; i + VL <= plane; i += VL) *(v16u*)(ym + i) = add_clamp(*(v16u*)(ym + i), vb, rm, i, vlo, vhi);
        for (; i < plane; i++) {
            float v = ym[i] + b;
            if (rm) v = v + rm[i];
            v = v < lo ? lo : v; /* NaN passes, as NumPy's maximum */
            ym[i] = v > hi ? hi : v;
        }
    }
}

/* one task per (image, group, block of output channels): the block's product, then its epilogue */
static void cgemm_tasks(void* ctx, long begin, long end)
{
    const cgemm_job* q = ctx;
    const conv_job* j = q->j;
    const long long* g = j->g;
    const long G = g[G_G], C = g[G_C], M = g[G_M], K = g[G_K], CK = C * K, plane = q->plane;
    TASK_EPILOGUE(j, scratch, lo, hi);
    for (long t = begin; t < end; t++) {
        long ib = t % q->mblocks, ng = t / q->mblocks; /* ng = n * G + gi */
        long gi = ng % G, m0 = ib * q->mb;
        int rows = (int)(M - m0 < q->mb ? M - m0 : q->mb);
        const long mpad = (M + SG_MR - 1) / SG_MR * SG_MR; /* each group's rows in whole panels */
        const float* a = j->w + gi * mpad * CK;           /* the group's packed weights */
        const float* b = q->col ? q->col + ng * CK * plane : j->x + ng * C * plane;
        long yo = (ng * M + m0) * plane;
        sg_gemm_apacked(a, mpad, m0, rows, CK, b, plane, plane, j->y + yo, plane); /* m0: a multiple of SG_MR */
        rows_epilogue(j, j->y + yo, j->bias ? j->bias + gi * M + m0 : NULL, j->res ? j->res + yo : NULL, rows, plane,
                      scratch, lo, hi);
    }
}

/* the number of tasks, after choosing the blocks of output channels: one block per image and
   group unless the pool has threads to feed, then blocks of at least two weight panels */
static long cgemm_plan(cgemm_job* q, int threads)
{
    const long long* g = q->j->g;
    const long M = g[G_M], jobs = g[G_N] * g[G_G];
    long want = (threads + jobs - 1) / jobs;
    long mb = (M + want - 1) / want;
    mb = mb < 2 * SG_MR ? 2 * SG_MR : (mb + SG_MR - 1) / SG_MR * SG_MR; /* whole panels of the packed weights */
    q->mb = mb < M ? mb : M;
    q->mblocks = (M + q->mb - 1) / q->mb;
    return jobs * q->mblocks;
}

#endif

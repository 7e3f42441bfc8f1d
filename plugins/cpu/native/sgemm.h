/* C = A x B for a constant B (a MatMul's or Gemm's weights), with B packed once when the
   model is prepared: what onnxruntime's MLAS does (MlasGemmPackB) and OpenBLAS cannot, since it
   has no packing API and re-packs the whole weight matrix on every call (for BERT's
   768 x 3072 weights, 9 MiB copied per product at batch 1).

   The blocking is the usual one (Goto/BLIS): B in panels of NR columns, [N/NR][K][NR] (zero
   columns past N), each k-slice of KC rows of a panel contiguous (32 KiB: L1); A packed per
   task, up to MC rows x KC at a time, as [MC/MR][KC][MR] (zero rows past M: L2); the microkernel keeps
   an MR x NR block of C in 24 AVX-512 registers, 2 vector loads of B and 12 broadcasts of A per
   k. A product is split over the pool by blocks of NR-column panels (and of MC rows when the
   columns alone are too few); every block sums over k in the same order, so the split never
   changes a bit. */
#ifndef GRAPHOPT_SGEMM_H
#define GRAPHOPT_SGEMM_H

#define SG_MR 12
#define SG_NR 32
#define SG_KC 256
#define SG_MC 504 /* most rows of A packed at once (a multiple of SG_MR): each block streams all of B */

/* rows [p0, p0 + kc) of B (row-major, N columns, rows ldb apart) as panels of NR columns,
   P[(j * kc + k) * NR + c] = B[p0 + k][j * NR + c] (0 past N); with p0 = 0 and kc = K, the whole
   of B as the products below read it */
static void sg_pack_b(const float* B, long ldb, long N, long p0, long kc, float* P)
{
    long panels = (N + SG_NR - 1) / SG_NR;
    for (long j = 0; j < panels; j++) {
        long n0 = j * SG_NR, cols = N - n0 < SG_NR ? N - n0 : SG_NR;
        for (long k = 0; k < kc; k++) {
            float* d = P + (j * kc + k) * SG_NR;
            const float* b = B + (p0 + k) * ldb + n0;
            if (cols == SG_NR) { /* two vectors: a call to memcpy per 128 bytes cost 10% of a conv */
                *(v16u*)d = *(const v16u*)b;
                *(v16u*)(d + VL) = *(const v16u*)(b + VL);
                continue;
            }
            memcpy(d, b, (size_t)cols * sizeof(float));
            for (long c = cols; c < SG_NR; c++) d[c] = 0.0f;
        }
    }
}

/* a constant A (M x K, rows lda apart) as panels of MR rows, k-slice by k-slice: the slice from
   p0 (kc = min(KC, K - p0) columns) holds every panel in turn, panel i's value (row r, column k)
   at P[p0 * Mpad + (i * kc + k - p0) * MR + r] (Mpad: M in whole panels, zero rows past M), so
   that a product streams one slice of all the panels as one run of memory (the conv's weights:
   packed once) */
static void sg_pack_a_panels(const float* A, long M, long K, long lda, float* P)
{
    const long mpad = (M + SG_MR - 1) / SG_MR * SG_MR;
    for (long p0 = 0; p0 < K; p0 += SG_KC) {
        long kc = K - p0 < SG_KC ? K - p0 : SG_KC;
        for (long i = 0; i < mpad / SG_MR; i++)
            for (long k = 0; k < kc; k++)
                for (long r = 0; r < SG_MR; r++)
                    P[p0 * mpad + (i * kc + k) * SG_MR + r] =
                        i * SG_MR + r < M ? A[(i * SG_MR + r) * lda + p0 + k] : 0.0f;
    }
}

/* rows [0, mc) x columns [p0, p0 + kc) of A (rows lda apart) as [mc/MR][kc][MR], zero rows past mc */
static void sg_pack_a(const float* A, long lda, long mc, long p0, long kc, float* P)
{
    for (long i = 0; i < mc; i += SG_MR) {
        float* d = P + i * kc;
        long rows = mc - i < SG_MR ? mc - i : SG_MR;
        for (long r = 0; r < rows; r++) {
            const float* a = A + (i + r) * lda + p0;
            for (long k = 0; k < kc; k++) d[k * SG_MR + r] = a[k];
        }
        for (long r = rows; r < SG_MR; r++)
            for (long k = 0; k < kc; k++) d[k * SG_MR + r] = 0.0f;
    }
}

/* C[rows x cols] (= or +=) alpha-free sum over kc of a (packed MR) x b (packed NR), for R (a
   constant once inlined) rows of accumulators: a block of fewer than MR rows (a GEMV at batch 1,
   the last rows of 197 tokens) costs its own rows, not MR */
static inline __attribute__((always_inline)) void sg_kernel_r(const int R, long kc, const float* restrict a,
                                                              const float* restrict b, float* c, long ldc, int first,
                                                              int rows, int cols)
{
    v16 acc[SG_MR][2];
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = vsplat(0.0f);
    for (long k = 0; k < kc; k++) {
        const v16 b0 = *(const v16u*)(b + k * SG_NR), b1 = *(const v16u*)(b + k * SG_NR + VL);
#pragma GCC unroll 12
        for (int r = 0; r < R; r++) {
            const v16 av = vsplat(a[k * SG_MR + r]);
            acc[r][0] += av * b0;
            acc[r][1] += av * b1;
        }
    }
    if (cols == SG_NR) {
#pragma GCC unroll 12
        for (int r = 0; r < R; r++) {
            if (r >= rows) break;
            v16u* c0 = (v16u*)(c + r * ldc);
            v16u* c1 = (v16u*)(c + r * ldc + VL);
            if (first) *c0 = acc[r][0], *c1 = acc[r][1];
            else *c0 += acc[r][0], *c1 += acc[r][1];
        }
        return;
    }
    float t[SG_MR][SG_NR];
    for (int r = 0; r < R; r++) *(v16u*)&t[r][0] = acc[r][0], *(v16u*)&t[r][VL] = acc[r][1];
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < cols; q++) c[r * ldc + q] = first ? t[r][q] : c[r * ldc + q] + t[r][q];
}

static void sg_kernel(long kc, const float* restrict a, const float* restrict b, float* c, long ldc, int first,
                      int rows, int cols)
{
    switch (rows) {
#define SG_ROWS(R) case R: sg_kernel_r(R, kc, a, b, c, ldc, first, rows, cols); return;
    SG_ROWS(1) SG_ROWS(2) SG_ROWS(3) SG_ROWS(4) SG_ROWS(5) SG_ROWS(6) SG_ROWS(7) SG_ROWS(8) SG_ROWS(9)
    SG_ROWS(10) SG_ROWS(11)
#undef SG_ROWS
    default: sg_kernel_r(SG_MR, kc, a, b, c, ldc, first, rows, cols);
    }
}

/* C (rows x N, ldc) = A x B for rows [m0, m0 + rows) of an A packed by sg_pack_a_panels (ap: its
   start, mpad its rows in whole panels, m0 a multiple of MR) and B row-major (K x N, ldb), B
   packed one k-slice at a time: all its panels when they fit L2 (then each panel of A is read
   once), else one panel at a time (32 KiB, kept in L1 while every row panel of A uses it) */
#define SG_NWIDE 256 /* columns of B up to which a whole k-slice of it is packed at once (256 KiB: L2) */

static void sg_gemm_apacked(const float* ap, long mpad, long m0, long rows, long K, const float* B, long ldb, long N,
                            float* C, long ldc)
{
    static __thread float* bpack; /* each pool thread's B: one k-slice of one panel, or of all of them */
    if (!bpack && !(bpack = aligned_alloc(64, SG_KC * SG_NWIDE * sizeof(float)))) abort();
    const int wide = N <= SG_NWIDE;
    for (long p0 = 0; p0 < K; p0 += SG_KC) {
        long kc = K - p0 < SG_KC ? K - p0 : SG_KC;
        const float* slice = ap + p0 * mpad + m0 * kc; /* this slice of the block's first panel */
        if (wide) {
            sg_pack_b(B, ldb, N, p0, kc, bpack);
            for (long i = 0; i < rows; i += SG_MR)
                for (long n0 = 0; n0 < N; n0 += SG_NR)
                    sg_kernel(kc, slice + i * kc, bpack + n0 * kc, C + i * ldc + n0, ldc, p0 == 0,
                              (int)(rows - i < SG_MR ? rows - i : SG_MR), (int)(N - n0 < SG_NR ? N - n0 : SG_NR));
            continue;
        }
        for (long n0 = 0; n0 < N; n0 += SG_NR) {
            int cols = (int)(N - n0 < SG_NR ? N - n0 : SG_NR);
            sg_pack_b(B + n0, ldb, cols, p0, kc, bpack);
            for (long i = 0; i < rows; i += SG_MR)
                sg_kernel(kc, slice + i * kc, bpack, C + i * ldc + n0, ldc, p0 == 0,
                          (int)(rows - i < SG_MR ? rows - i : SG_MR), cols);
        }
    }
}

typedef struct {
    const float *a, *bp;
    float* c;
    long m, n, k, lda, ldc;
    float alpha;
    long pb, mb; /* panels and rows per task */
    long pblocks, mblocks;
} sg_job;

static void sg_tasks(void* ctx, long begin, long end)
{
    const sg_job* j = ctx;
    static __thread float* apack; /* each pool thread's A block, kept for its later products */
    if (!apack && !(apack = aligned_alloc(64, SG_MC * SG_KC * sizeof(float)))) abort();
    const long panels = (j->n + SG_NR - 1) / SG_NR;
    for (long t = begin; t < end; t++) {
        long jp0 = (t % j->pblocks) * j->pb, jp1 = jp0 + j->pb < panels ? jp0 + j->pb : panels;
        long m0 = (t / j->pblocks) * j->mb, m1 = m0 + j->mb < j->m ? m0 + j->mb : j->m;
        /* blocks of equal size: 197 rows are one block, not 192 + 5 (a second pass over B for 5 rows) */
        long nblk = (m1 - m0 + SG_MC - 1) / SG_MC, step = ((m1 - m0 + nblk - 1) / nblk + SG_MR - 1) / SG_MR * SG_MR;
        for (long ic = m0; ic < m1; ic += step) {
            long mc = m1 - ic < step ? m1 - ic : step;
            for (long p0 = 0; p0 < j->k; p0 += SG_KC) {
                long kc = j->k - p0 < SG_KC ? j->k - p0 : SG_KC;
                sg_pack_a(j->a + ic * j->lda, j->lda, mc, p0, kc, apack);
                for (long jp = jp0; jp < jp1; jp++) {
                    const float* b = j->bp + (jp * j->k + p0) * SG_NR;
                    long n0 = jp * SG_NR;
                    int cols = (int)(j->n - n0 < SG_NR ? j->n - n0 : SG_NR);
                    for (long i = 0; i < mc; i += SG_MR)
                        sg_kernel(kc, apack + i * kc, b, j->c + (ic + i) * j->ldc + n0, j->ldc, p0 == 0,
                                  (int)(mc - i < SG_MR ? mc - i : SG_MR), cols);
                }
            }
            if (j->alpha != 1.0f) /* OpenBLAS's order too: the sum first, then alpha */
                for (long i = ic; i < ic + mc; i++) {
                    float* ci = j->c + i * j->ldc + jp0 * SG_NR;
                    long cols = (jp1 * SG_NR < j->n ? jp1 * SG_NR : j->n) - jp0 * SG_NR;
                    for (long q = 0; q < cols; q++) ci[q] *= j->alpha;
                }
        }
    }
}

/* tasks: blocks of panels, at least two per thread when there are enough; rows split too
   when the panels alone give fewer tasks than threads */
static long sg_plan(sg_job* j, int threads)
{
    const long panels = (j->n + SG_NR - 1) / SG_NR;
    const long long flops = 2LL * j->m * j->n * j->k;
    long want = flops < (1LL << 21) ? 1 : 2L * threads;
    j->pb = (panels + want - 1) / want;
    j->pblocks = (panels + j->pb - 1) / j->pb;
    j->mb = j->m, j->mblocks = 1;
    if (j->pblocks < want && j->m >= 2 * SG_MR) {
        long mblocks = (want + j->pblocks - 1) / j->pblocks;
        long mb = (j->m + mblocks - 1) / mblocks;
        j->mb = (mb + SG_MR - 1) / SG_MR * SG_MR;
        j->mblocks = (j->m + j->mb - 1) / j->mb;
    }
    return j->pblocks * j->mblocks;
}

#endif

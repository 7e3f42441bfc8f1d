/* Large GEMMs through NumPy's own OpenBLAS, run on this extension's pool.

   OpenBLAS's own threads wait for work by spinning; on a machine whose cores are shared
   (other processes, our pool, onnxruntime's pool in the same process) a 2-thread OpenBLAS
   sgemm measured 3.4x the CPU time of a 1-thread one and 3x its wall time (128x768x3072, a
   2-core VM under load). So the product is split into blocks of C here, and each block is one
   single-threaded OpenBLAS call (openblas_set_num_threads_local(1) on the thread making it),
   taken from the pool like any other task: the caller never waits for a thread that is not
   running. (In the OpenBLAS NumPy ships, that setting is not per thread but global: the
   caller saves the count before the job and restores it once every task is done, so NumPy's
   own calls keep their threads.) The library is the one NumPy already loaded (dlopen RTLD_NOLOAD of the path
   native.py finds), so the kernels are OpenBLAS's, tuned for the CPU; without it (another
   NumPy build, no ILP64 cblas symbol) native.py keeps NumPy's matmul. */
#ifndef GRAPHOPT_BLAS_H
#define GRAPHOPT_BLAS_H

#include <dlfcn.h>

typedef void (*sgemm64_t)(int order, int ta, int tb, long long m, long long n, long long k, float alpha,
                          const float* a, long long lda, const float* b, long long ldb, float beta, float* c,
                          long long ldc);

typedef void (*sgemv64_t)(int order, int trans, long long m, long long n, float alpha, const float* a, long long lda,
                          const float* x, long long incx, float beta, float* y, long long incy);

static sgemm64_t blas_sgemm;
static sgemv64_t blas_sgemv;
static int (*blas_threads_local)(int);

enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

typedef struct {
    const float *a, *b;
    float* c;
    long long m, n, k, lda, ldb, ldc;
    int ta, tb;
    float alpha, beta;
    long mb, nb; /* block sizes */
    long mblocks, nblocks;
} gemm_job;

static void gemm_tasks(void* ctx, long begin, long end)
{
    const gemm_job* j = ctx;
    blas_threads_local(1); /* the caller restores its own count after the job (see py_gemm) */
    for (long t = begin; t < end; t++) {
        long i = t / j->nblocks, jn = t % j->nblocks;
        long m0 = i * j->mb, n0 = jn * j->nb;
        long m = j->m - m0 < j->mb ? j->m - m0 : j->mb, n = j->n - n0 < j->nb ? j->n - n0 : j->nb;
        const float* a = j->ta ? j->a + m0 : j->a + m0 * j->lda;
        const float* b = j->tb ? j->b + n0 * j->ldb : j->b + n0;
        if (m == 1 && !j->ta && j->beta == 0.0f) { /* one row: a matrix-vector product, c = op(b)^T a */
            if (j->tb)
                blas_sgemv(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, n, j->k, j->alpha, b, j->ldb, a, 1, 0.0f,
                           j->c + m0 * j->ldc + n0, 1);
            else
                blas_sgemv(CBLAS_ROW_MAJOR, CBLAS_TRANS, j->k, n, j->alpha, b, j->ldb, a, 1, 0.0f,
                           j->c + m0 * j->ldc + n0, 1);
            continue;
        }
        blas_sgemm(CBLAS_ROW_MAJOR, j->ta ? CBLAS_TRANS : CBLAS_NO_TRANS, j->tb ? CBLAS_TRANS : CBLAS_NO_TRANS, m, n,
                   j->k, j->alpha, a, j->lda, b, j->ldb, j->beta, j->c + m0 * j->ldc + n0, j->ldc);
    }
}

/* blocks of C: whole rows of up to 256 columns (a multiple of 16), rows split too when the
   columns alone give fewer than four blocks per thread */
static void gemm_plan(gemm_job* j, int threads)
{
    const long long flops = j->m * j->n * j->k;
    j->mb = j->m, j->nb = j->n;
    if (j->m == 1 && flops >= (1LL << 18)) { /* a matrix-vector product: blocks of columns */
        long nb = (j->n / (2L * threads) + 15) / 16 * 16;
        j->nb = nb < 256 ? 256 : nb;
    } else if (flops >= (1LL << 21)) { /* smaller products run on the caller in one call */
        long want = 4L * threads;
        long nb = j->n / want;
        nb = nb < 64 ? 64 : nb > 256 ? 256 : nb;
        nb = (nb + 15) / 16 * 16;
        j->nb = nb < j->n ? nb : j->n;
        long nblocks = (j->n + j->nb - 1) / j->nb;
        if (nblocks < want && j->m >= 32) {
            long mb = j->m * nblocks / want;
            mb = mb < 16 ? 16 : mb;
            j->mb = mb < j->m ? mb : j->m;
        }
    }
    j->mblocks = (j->m + j->mb - 1) / j->mb;
    j->nblocks = (j->n + j->nb - 1) / j->nb;
}

#endif

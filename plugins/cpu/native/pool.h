/* A small thread pool for the native kernels: parallel_for(fn, ctx, n) runs fn(ctx, b, e)
   over chunks [b, e) covering [0, n), the caller and the pool's workers taking tasks from one atomic
   counter. The caller never waits for a worker that has not started: when the workers'
   cores are busy (another process, a BLAS thread), the caller simply runs every task
   itself; it waits only for tasks a worker has taken.

   A job is open while its tasks are handed out. A worker joins it by counting itself
   in `active` and then checking that the job is still open; the caller closes the job
   once the counter runs out and then waits for `active` to fall to zero (both sides use
   sequentially consistent atomics, so a worker that joins late sees the job closed).

   Workers spin for a short while after a job (the next kernel of a model usually follows
   within microseconds), then sleep on a condition variable. The pool starts on first use
   with one thread per online CPU (GRAPHOPT_NUM_THREADS overrides), and starts again in a
   forked child, whose copy of the pool has no threads. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define POOL_MAX 64
#define POOL_SPIN 20000 /* pause loops a worker waits before sleeping: tens of microseconds */

typedef void (*pool_fn)(void* ctx, long begin, long end);

static struct {
    int threads; /* including the caller; 0 until started */
    atomic_long generation;
    long start_generation;
    atomic_int open, active, sleeping;
    atomic_long next;
    pool_fn fn;
    void* ctx;
    long n, grain; /* tasks taken at once: about 8 takes per thread, so the counter is rarely contended */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t run_mu; /* one job at a time (two Python threads may call in) */
} pool = {0, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER,
          .run_mu = PTHREAD_MUTEX_INITIALIZER};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void pool_take_tasks(void)
{
    for (;;) {
        long i = atomic_fetch_add(&pool.next, pool.grain);
        if (i >= pool.n) return;
        pool.fn(pool.ctx, i, i + pool.grain < pool.n ? i + pool.grain : pool.n);
    }
}

static void* pool_worker(void* arg)
{
    (void)arg;
    long seen = pool.start_generation; /* not generation itself: a job may already have been posted */
    for (;;) {
        for (int k = 0; k < POOL_SPIN && atomic_load(&pool.generation) == seen; k++) cpu_relax();
        if (atomic_load(&pool.generation) == seen) {
            pthread_mutex_lock(&pool.mu);
            atomic_fetch_add(&pool.sleeping, 1);
            while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
            atomic_fetch_sub(&pool.sleeping, 1);
            pthread_mutex_unlock(&pool.mu);
        }
        seen = atomic_load(&pool.generation);
        atomic_fetch_add(&pool.active, 1);
        if (atomic_load(&pool.open)) pool_take_tasks();
        atomic_fetch_sub(&pool.active, 1);
    }
    return NULL;
}

static void pool_forget(void) { pool.threads = 0; } /* in a forked child: its threads did not come along */

static void pool_start(void)
{
    static int atfork;
    if (!atfork) { pthread_atfork(NULL, NULL, pool_forget); atfork = 1; }
    long want = sysconf(_SC_NPROCESSORS_ONLN);
    const char* env = getenv("GRAPHOPT_NUM_THREADS");
    if (env && atoi(env) > 0) want = atoi(env);
    if (want < 1) want = 1;
    if (want > POOL_MAX) want = POOL_MAX;
    pool.start_generation = atomic_load(&pool.generation);
    int started = 1;
    for (int i = 1; i < want; i++) {
        pthread_t tid;
        if (pthread_create(&tid, NULL, pool_worker, NULL) != 0) break;
        pthread_detach(tid);
        started++;
    }
    pool.threads = started;
}

/* the pool's thread count, the caller included (starting the pool) */
static int pool_size(void)
{
    pthread_mutex_lock(&pool.run_mu);
    if (pool.threads == 0) pool_start();
    int n = pool.threads;
    pthread_mutex_unlock(&pool.run_mu);
    return n;
}

static void parallel_for(pool_fn fn, void* ctx, long n)
{
    pthread_mutex_lock(&pool.run_mu);
    if (pool.threads == 0) pool_start();
    if (pool.threads == 1 || n < 2) {
        fn(ctx, 0, n);
        pthread_mutex_unlock(&pool.run_mu);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.grain = n / (8L * pool.threads) > 1 ? n / (8L * pool.threads) : 1;
    atomic_store(&pool.next, 0);
    atomic_store(&pool.open, 1);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleeping) > 0) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.mu);
    }
    pool_take_tasks();
    atomic_store(&pool.open, 0);
    for (int k = 0; atomic_load(&pool.active) > 0; k++) {
        if (k < 2000) cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&pool.run_mu);
}

// CPU emulation of the CUDA runtime, cuBLAS GEMM and the block/thread execution model (ucontext fibers), for
// running the CUDA backend's kernels and host code unchanged on a machine without a GPU.
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <ucontext.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <map>
#include <vector>
#include <functional>

uint3 tl_emu_bidx;
dim3 tl_emu_bdim, tl_emu_gdim;
static cudaError_t g_last = cudaSuccess;
static std::map<const void *, int> g_smem_attr;
static int g_optin = 232448;          /* H100 / H200; TL_EMU_OPTIN overrides (166912 = A100) */
static int g_order = 0;               /* fiber scheduling order: 0 forward, 1 reverse, 2 shuffled */

enum { RUN, WBLOCK, WWARP, DONE };
/* Fiber switches: swapcontext saves and restores the signal mask with a system call on every switch, which was
 * 60% of an emulated training step; on x86-64 a plain switch of the callee-saved registers, the stack pointer and
 * the FPU control words does the same job (the fibers never touch the signal mask). ASan needs swapcontext (it
 * intercepts it to follow the stacks), so the sanitizer build and other architectures keep it. */
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define TL_EMU_FAST_SWITCH 1
extern "C" void tl_emu_switch(void **save_sp, void *new_sp);
__asm__(".text\n"
        ".globl tl_emu_switch\n"
        ".type tl_emu_switch,@function\n"
        "tl_emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size tl_emu_switch,.-tl_emu_switch\n");
#endif
struct Fiber { ucontext_t uc; void *sp; int state; };
static std::vector<Fiber> g_f;
static std::vector<char *> g_stacks;
static const size_t STACK = 256 * 1024;
static ucontext_t g_sched;
#ifdef TL_EMU_FAST_SWITCH
static void *g_sched_sp;
#endif
static int g_cur;
static std::function<void()> *g_body;
static unsigned char *g_dyn;
static double g_xbuf[32][32];

uint3 tl_emu_tid(void) {
    uint3 t;
    unsigned c = (unsigned)g_cur;
    t.x = c % tl_emu_bdim.x;
    t.y = (c / tl_emu_bdim.x) % tl_emu_bdim.y;
    t.z = c / (tl_emu_bdim.x * tl_emu_bdim.y);
    return t;
}
unsigned tl_emu_lane(void) { return (unsigned)g_cur & 31u; }
void *tl_emu_xbuf(void) { return g_xbuf[g_cur >> 5]; }
void *tl_emu_dyn_smem(void) { return g_dyn; }

void tl_emu_sync(int warp_only) {
    g_f[g_cur].state = warp_only ? WWARP : WBLOCK;
#ifdef TL_EMU_FAST_SWITCH
    tl_emu_switch(&g_f[g_cur].sp, g_sched_sp);
#else
    swapcontext(&g_f[g_cur].uc, &g_sched);
#endif
}

static void entry(void) {
    (*g_body)();
    g_f[g_cur].state = DONE;
#ifdef TL_EMU_FAST_SWITCH
    tl_emu_switch(&g_f[g_cur].sp, g_sched_sp); /* never resumed */
    abort();
#endif
}

static void run_block(int nt) {
    if ((int)g_stacks.size() < nt)
        while ((int)g_stacks.size() < nt) g_stacks.push_back((char *)malloc(STACK));
    g_f.assign(nt, Fiber());
    for (int i = 0; i < nt; i++) {
#ifdef TL_EMU_FAST_SWITCH
        /* the frame tl_emu_switch pops: FPU control words, r15..r12, rbx, rbp, then the return address (entry),
         * placed so that entry starts as a called function does (rsp = 8 mod 16) */
        uintptr_t top = ((uintptr_t)g_stacks[i] + STACK - 64) & ~(uintptr_t)15;
        void **f = (void **)top - 9; /* f[7] at top - 16: after its ret, rsp = top - 8 */
        uint32_t ctl[2] = {0x1f80u, 0x037fu}; /* MXCSR and x87 control word at their defaults */
        memcpy(&f[0], ctl, sizeof ctl);
        for (int r = 1; r <= 6; r++) f[r] = NULL;
        f[7] = (void *)entry;
        f[8] = NULL; /* where entry finds its (never used) return address */
        g_f[i].sp = f;
        g_f[i].state = RUN;
        continue;
#endif
        getcontext(&g_f[i].uc);
        g_f[i].uc.uc_stack.ss_sp = g_stacks[i];
        g_f[i].uc.uc_stack.ss_size = STACK;
        g_f[i].uc.uc_link = &g_sched;
        makecontext(&g_f[i].uc, entry, 0);
        g_f[i].state = RUN;
    }
    std::vector<int> order(nt);
    unsigned rng = 12345;
    for (;;) {
        for (int i = 0; i < nt; i++) order[i] = g_order == 1 ? nt - 1 - i : i;
        if (g_order == 2)
            for (int i = nt - 1; i > 0; i--) {
                rng = rng * 1103515245u + 12345u;
                int j = (int)((rng >> 8) % (unsigned)(i + 1));
                int t = order[i]; order[i] = order[j]; order[j] = t;
            }
        for (int ii = 0; ii < nt; ii++) {
            int i = order[ii];
            if (g_f[i].state != RUN) continue;
            g_cur = i;
#ifdef TL_EMU_FAST_SWITCH
            tl_emu_switch(&g_sched_sp, g_f[i].sp);
#else
            swapcontext(&g_sched, &g_f[i].uc);
#endif
        }
        int ndone = 0, nblock = 0;
        for (int i = 0; i < nt; i++) { ndone += g_f[i].state == DONE; nblock += g_f[i].state == WBLOCK; }
        if (ndone == nt) return;
        bool released = false;
        for (int w = 0; w * 32 < nt; w++) {
            int lanes = nt - w * 32 < 32 ? nt - w * 32 : 32, nww = 0, nd = 0;
            for (int l = 0; l < lanes; l++) { int s = g_f[w * 32 + l].state; nww += s == WWARP; nd += s == DONE; }
            if (nww == 0) continue;
            if (nww + nd == lanes) {
                if (nd) { fprintf(stderr, "EMU: warp barrier/shuffle with exited lanes (warp %d)\n", w); abort(); }
                for (int l = 0; l < lanes; l++) g_f[w * 32 + l].state = RUN;
                released = true;
            }
        }
        if (released) continue;
        if (nblock + ndone == nt) {
            if (ndone) { fprintf(stderr, "EMU: __syncthreads with %d exited threads (block %u,%u,%u)\n", ndone, tl_emu_bidx.x, tl_emu_bidx.y, tl_emu_bidx.z); abort(); }
            for (int i = 0; i < nt; i++) g_f[i].state = RUN;
            continue;
        }
        fprintf(stderr, "EMU: deadlock: threads wait on different barriers (block %u,%u,%u)\n", tl_emu_bidx.x, tl_emu_bidx.y, tl_emu_bidx.z);
        abort();
    }
}

long long tl_emu_launches = 0;
void tl_emu_run(const void *kernel, dim3 g, dim3 b, size_t smem, std::function<void()> *body) {
    tl_emu_launches++;
    unsigned nt = b.x * b.y * b.z;
    int lim = 48 * 1024;
    auto it = g_smem_attr.find(kernel);
    if (it != g_smem_attr.end()) lim = it->second;
    if (nt == 0 || nt > 1024 || g.x == 0 || g.y == 0 || g.z == 0 || g.y > 65535 || g.z > 65535 || smem > (size_t)lim) {
        fprintf(stderr, "EMU: bad launch grid (%u,%u,%u) block %u smem %zu (limit %d)\n", g.x, g.y, g.z, nt, smem, lim);
        g_last = cudaErrorInvalidConfiguration;
        return;
    }
    const char *o = getenv("TL_EMU_ORDER");
    g_order = o ? atoi(o) : 0;
    g_body = body;
    tl_emu_bdim = b;
    tl_emu_gdim = g;
    for (unsigned z = 0; z < g.z; z++)
        for (unsigned y = 0; y < g.y; y++)
            for (unsigned x = 0; x < g.x; x++) {
                tl_emu_bidx.x = x; tl_emu_bidx.y = y; tl_emu_bidx.z = z;
                unsigned char *dyn = NULL;
                if (smem) { dyn = (unsigned char *)aligned_alloc(128, (smem + 127) / 128 * 128); memset(dyn, 0xff, smem); }
                g_dyn = dyn;
                run_block((int)nt);
                free(dyn);
            }
}

/* ---- runtime API ---- */
extern "C" {
cudaError_t cudaGetDeviceCount(int *n) { const char *e = getenv("TL_EMU_NODEV"); *n = e ? 0 : 1; return e ? cudaErrorNoDevice : cudaSuccess; }
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) { cudaError_t e = g_last; g_last = cudaSuccess; return e; }
const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : e == cudaErrorInvalidConfiguration ? "invalid configuration argument" : "emulated error"; }
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int) {
    if (a == cudaDevAttrMaxSharedMemoryPerBlockOptin) { const char *e = getenv("TL_EMU_OPTIN"); *v = e ? atoi(e) : g_optin; return cudaSuccess; }
    return cudaErrorInvalidValue;
}
cudaError_t cudaFuncSetAttribute(const void *f, cudaFuncAttribute a, int v) {
    const char *e = getenv("TL_EMU_OPTIN");
    int optin = e ? atoi(e) : g_optin;
    if (a != cudaFuncAttributeMaxDynamicSharedMemorySize || v > optin) return cudaErrorInvalidValue;
    g_smem_attr[f] = v;
    return cudaSuccess;
}
static size_t g_live = 0;
cudaError_t cudaMalloc(void **p, size_t n) {
    void *q = malloc(n ? n : 1);
    if (!q) return cudaErrorMemoryAllocation;
    memset(q, 0xff, n);
    *p = q; g_live++;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) { if (p) g_live--; free(p); return cudaSuccess; }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t) { memmove(d, s, n); return cudaSuccess; }
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) { memmove(d, s, n); return cudaSuccess; }
cudaError_t cudaMemset(void *p, int v, size_t n) { memset(p, v, n); return cudaSuccess; }
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { memset(p, v, n); return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { *s = (cudaStream_t)0x1234; return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }

/* ---- cuBLAS ---- */
cublasStatus_t cublasCreate_v2(cublasHandle_t *h) { *h = (cublasHandle_t)0x5678; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy_v2(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }
const char *cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : "CUBLAS_STATUS_INVALID_VALUE"; }
static float ldv(const void *p, cudaDataType t, size_t i) { return t == CUDA_R_32F ? ((const float *)p)[i] : __bfloat162float(((const __nv_bfloat16 *)p)[i]); }
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t,
                            cublasGemmAlgo_t) {
    int arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1)) {
        fprintf(stderr, "EMU cublas: invalid m=%d n=%d k=%d lda=%d ldb=%d ldc=%d\n", m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (at != bt) return CUBLAS_STATUS_NOT_SUPPORTED;
    float al = *(const float *)alpha, be = *(const float *)beta;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float s = 0.0f;
            for (int l = 0; l < k; l++) {
                float a = ta == CUBLAS_OP_N ? ldv(A, at, i + (size_t)l * lda) : ldv(A, at, l + (size_t)i * lda);
                float b = tb == CUBLAS_OP_N ? ldv(B, bt, l + (size_t)j * ldb) : ldv(B, bt, j + (size_t)l * ldb);
                s += a * b;
            }
            size_t ci = i + (size_t)j * ldc;
            float v = al * s + (be != 0.0f ? be * ldv(C, ct, ci) : 0.0f);
            if (ct == CUDA_R_32F) ((float *)C)[ci] = v;
            else ((__nv_bfloat16 *)C)[ci] = __float2bfloat16(v);
        }
    return CUBLAS_STATUS_SUCCESS;
}
}

/* engine_cuda.h — private to the engine's CUDA files (ops_cuda.cu,
 * sample_cuda.cu) and its op tests: what sample_cuda.cu exports, and the
 * first-error record of ops_cuda.cu that it reports through. Plain C
 * declarations (the engine and the tests are C); only built with CUDA. */
#ifndef DPEP_ENGINE_CUDA_H
#define DPEP_ENGINE_CUDA_H

#include "dpep_engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The CUDA table's `sample` (the contract of dpep_engine_ops.sample): every
 * row of a step at once on the current device. logits: device memory
 * [n, vocab]; sp, rng, ids, logprob: host memory; scratch: unused (the
 * table's host scratch; the device keeps its own).
 *
 * Per row with sp[i] != NULL, as dpep_sample and dpep_logprob
 * (sample_cpu.c) do:
 *   greedy (temperature <= 0 or top_k == 1): the argmax, the lowest id
 *     among equal maxima; rng[i] is not touched;
 *   otherwise: exactly one uniform drawn on the host from rng[i] (so the
 *     stream advances as on the CPU), then on the device temperature,
 *     top-k (ties at the k-th value kept), top-p (the CPU's bisected
 *     threshold), min-p and the draw in id order with that uniform;
 *   logprob[i]: log-softmax of the RAW logits (no temperature, no filter)
 *     at ids[i], as dpep_logprob.
 * The device picks the CPU's token except when the uniform falls within
 * floating-point noise of a cumulative boundary (see sample_cuda.cu:
 * "Agreement with the CPU"). Rows with sp[i] == NULL: id -1, log-prob 0.
 *
 * One host-to-device copy (per-row parameters and uniforms) and one
 * device-to-host copy (ids and log-probs) per call; both synchronous on the
 * calling thread's default stream, so the results are final on return. On a CUDA
 * error: logged and recorded through dpep_engine_cuda_fail (op "sample"),
 * and every row with sp[i] != NULL gets id -1 and log-prob NaN.
 * Thread-safe: calls are serialized by one process-wide lock (the device
 * scratch is shared), as the other ops of ops_cuda.cu. */
void dpep_engine_cuda_sample(const float *logits, int n, int vocab, const dpep_sampling *const *sp,
                             uint64_t *const *rng, float *scratch, int32_t *ids, double *logprob);

/* Allocates the current device's sampling scratch for `vocab` (and the
 * per-row buffers for 4096 rows) ahead of the first step, so that no step
 * allocates; optional (the first sample call does it otherwise). DPEP_OK or
 * the CUDA error (logged). */
dpep_status dpep_engine_cuda_sample_reserve(int vocab);

/* Tests only: the kernel's algorithm for one row run sequentially on the
 * host (same keys, radix digits, crossing rule, fixed-point masses, replayed
 * top-p bisection and integer draw), with the uniform `u` given. p: vocab
 * floats of scratch. Returns the id the device would pick (up to the
 * one-ulp exp differences between the device's and the host's libm). */
int dpep_engine_cuda_sample_model(const float *row, int vocab, const dpep_sampling *sp, double u, float *p);

/* Defined in ops_cuda.cu: logs "engine cuda OP: call -> error" and keeps it
 * as the calling thread's first error, which the table's `check` returns. */
void dpep_engine_cuda_fail(const char *op, const char *call, const char *err, dpep_status st);

#ifdef __cplusplus
}
#endif

#endif /* DPEP_ENGINE_CUDA_H */

"""Mixed precision: the matmuls multiply in cfg.dtype, everything else computes in float32.

With dtype='bfloat16' the matmuls of the blocks (every Dense layer, attention's two einsums) take
bfloat16 inputs and accumulate and return float32; parameters, norms, softmax, activations,
residual stream, the output head's logits and the loss stay float32. That is the policy of
mixed-precision training (Micikevicius et al. 2018), and the one that is fast on a CPU with
AMX/AVX-512 BF16: its bf16 x bf16 -> f32 kernels run at several times the f32 peak, while
bf16 x bf16 -> bf16 dots take a slower path than f32 (experiments/perf). The backward pass needs
the same care: JAX's transpose of a dot with a float32 output multiplies the float32 cotangent
with the bf16 operand upcast, an f32 matmul. The matmuls therefore have their own VJPs: the
cotangent is rounded to bf16, and each of the two gradients is again a bf16 x bf16 -> f32 matmul.

dtype='float32' is the plain jnp.einsum. dtype='auto' is decided when a run is created, from
this machine's measured matmul peaks (peaks.fix_run_dtype), and the run's config keeps the
concrete dtype; building a model never measures anything. An 'auto' that reaches a model
unresolved (a model built straight from a config, outside a run) is float32 (`resolve`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np



def resolve(dtype: str) -> str:
  """config.model.dtype -> the dtype the matmuls multiply in: an unresolved 'auto' (a run resolves
  it when created: peaks.fix_run_dtype) is float32; anything else as it is."""
  return "float32" if dtype == "auto" else dtype


def _einsum(spec: str, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_einsum(spec, a, b):
  return _einsum(spec, a, b)


def _low_fwd(spec, a, b):
  return _einsum(spec, a, b), (a, b)


def _low_bwd(spec, res, g):
  a, b = res
  (ia, ib), out = spec.split("->")[0].split(","), spec.split("->")[1]
  g = g.astype(a.dtype)
  # spec 'A,B->C': dA = einsum('C,B->A', g, b), dB = einsum('C,A->B', g, a); exact when every
  # index of A is in B or C (nothing is summed over one operand alone), checked in `einsum`
  return (_einsum(f"{out},{ib}->{ia}", g, b).astype(a.dtype),
          _einsum(f"{out},{ia}->{ib}", g, a).astype(b.dtype))


_low_einsum.defvjp(_low_fwd, _low_bwd)


def einsum(spec: str, a, b, dtype):
  """jnp.einsum(spec, a, b) with a and b cast to `dtype`, accumulated and returned in float32
  (float32 inputs: the plain einsum). spec is explicit: 'ab,bc->ac'."""
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    return jnp.einsum(spec, a, b)
  (ia, ib), out = spec.split("->")[0].split(","), spec.split("->")[1]
  if not (set(ia) <= set(ib + out) and set(ib) <= set(ia + out)):
    raise ValueError(f"einsum {spec!r}: an index summed over one operand alone")
  return _low_einsum(spec, a.astype(dtype), b.astype(dtype))


@jax.custom_vjp
def _low_matmul(x_NK, w_KM):
  return _einsum("nk,km->nm", x_NK, w_KM)


def _matmul_fwd(x_NK, w_KM):
  return _low_matmul(x_NK, w_KM), (x_NK, w_KM)


def _matmul_bwd(res, g_NM):
  x_NK, w_KM = res
  g_NM = g_NM.astype(x_NK.dtype)
  # the weight's gradient x^T g contracts both operands' rows. XLA's CPU backend has fast bf16
  # kernels for row-major (K, N) x (N, M) only: x^T.g as written, or x.T as a transpose that
  # XLA may make a mere change of layout, is upcast to a float32 matmul. x^T is therefore
  # written out row-major: a 3-D transpose behind a barrier, whose reshape to 2-D is the copy
  # (a layout constraint would do it too, but it loses the batch axis's sharding on a mesh).
  # A GPU's matmuls read either layout: there x^T stays a transpose for XLA to fold
  n, k = x_NK.shape
  if jax.default_backend() == "cpu":
    x_KN = jax.lax.optimization_barrier(x_NK.reshape(n, k, 1).transpose(1, 0, 2)).reshape(k, n)
  else:
    x_KN = x_NK.T
  return (_einsum("nm,km->nk", g_NM, w_KM).astype(x_NK.dtype),
          _einsum("kn,nm->km", x_KN, g_NM).astype(w_KM.dtype))


_low_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(dtype):
  """A `dot_general` for flax's Dense and DenseGeneral (their `dot_general=` argument): the
  contraction of the inputs' trailing axes with the kernel's leading ones, as one (rows, K) x
  (K, M) matmul in `dtype` accumulated in float32 (float32: lax.dot_general, flax's default)."""
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    return jax.lax.dot_general

  def dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    (lc, rc), (lb, rb) = dimension_numbers
    n_c = len(lc)
    if lb or rb or tuple(lc) != tuple(range(lhs.ndim - n_c, lhs.ndim)) or \
        tuple(rc) != tuple(range(n_c)):
      raise ValueError(f"dot_general {dimension_numbers}: only a Dense's contraction")
    free_l, con, free_r = lhs.shape[:lhs.ndim - n_c], rhs.shape[:n_c], rhs.shape[n_c:]
    K = int(np.prod(con))
    y = _low_matmul(lhs.reshape(-1, K).astype(dtype), rhs.reshape(K, -1).astype(dtype))
    return y.reshape(*free_l, *free_r)

  return dot

"""PUMA's nonlinear functions as MPC protocols, each beside its plaintext float twin.

Every module holds one function as a protocol on :class:`veil.mpc.ArithShare` and its ``*_twin``:
the same formula in float64, rounded to the fixed-point grid where the protocol truncates,
so that tests and benchmarks separate approximation error (twin vs exact torch) from
protocol error (protocol vs twin).  Each docstring gives the formula, its source, the
valid input range, the error and the cost.

Measured at f = 18 (benchmarks/nonlinear.py; bytes sent and rounds of the busiest party):

    function                         error vs exact        rounds  bytes / party
    exp (quadratic, t = 5, clip)     2.4e-4 abs on [-14,0]    27    199.5 / element
    reciprocal (window 2^-10..2^10)  3.7e-4 rel               21    1030.5 / element
    rsqrt (window 2^-14..2^14)       4.0e-4 rel               23    1418.5 / element
    gelu 128x768 (symmetric)         1.0e-3 (PUMA's: 2.0e-2)  23    24.28 MB (SPU 30.7 MB, 55)
    silu (relu(x) - G(|x|), deg. 8)  2.7e-3 (PUMA's: 7.2e-2)   20    342.5 / element (PUMA 270.5)
    softmax 12x128x128 (exp t = 6)   9.3e-4                  130    57.07 MB (SPU 47.0 MB, 160)
    layernorm 128x768                6.6e-4                   31    3.38 MB (SPU 3.2 MB, 55)
    embedding 128 of 30522x768       exact                    15    34.02 MB
    argmax over 49152 (8-way tree)   exact                    86    12.94 MB
    sample over 49152 (T = 0.7)      exact one-hot, p ~2e-4  227    15.66 MB (top_p: 637, 70.3 MB)

Modules: exp, reciprocal, rsqrt (with bracket, the secret's bit length), gelu, silu (with
_piecewise), softmax, layernorm (LayerNorm and RMSNorm), embedding, argmax, sampling
(temperature, top-k, top-p), tanh.
"""

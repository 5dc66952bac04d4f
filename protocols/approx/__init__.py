"""PUMA's nonlinear functions as MPC protocols, each beside its plaintext float twin.

Every module holds one function as a protocol on :class:`veil.mpc.ArithShare` and its ``*_twin``:
the same formula in float64, rounded to the fixed-point grid where the protocol truncates,
so that tests and benchmarks separate approximation error (twin vs exact torch) from
protocol error (protocol vs twin).  Each docstring gives the formula, its source, the
valid input range, the error and the cost.

Measured at f = 18 (benchmarks/nonlinear.py; critical-path rounds, and bytes sent by the
busiest party; SPU's figures are its send steps):

    function                         error vs exact        rounds  bytes / party
    exp (quadratic, t = 5, clip)     2.4e-4 abs on [-14,0]    13    175.6 / element
    exp (poly8, t = 2, clip)         2.0e-5 abs on [-14,0]    11    175.6 / element
    reciprocal (window 2^-10..2^10)  3.7e-4 rel               11    1422.7 / element
    rsqrt (window 2^-14..2^14)       4.0e-4 rel               13    1982.0 / element
    gelu 128x768 (symmetric)         1.0e-3 (PUMA's: 2.0e-2)   9    17.75 MB (SPU 30.7 MB, 55)
    silu (relu(x) - G(|x|), deg. 8)  2.7e-3 (PUMA's: 7.2e-2)    9    353.6 / element (PUMA 238.9)
    softmax 12x128x128 (exp poly8)   3.0e-5                   66    48.96 MB (SPU 47.0 MB, 160)
    layernorm 128x768                4.8e-4                   17    6.60 MB (SPU 3.2 MB, 55)
    embedding 128 of 30522x768       exact                    14    33.76 MB
    argmax over 49152 (8-way tree)   exact                    57    10.27 MB
    sample over 49152 (T = 0.7)      exact one-hot, p ~2e-4  119    13.61 MB (top_p: 373, 57.9 MB)

Modules: exp, reciprocal, rsqrt (with bracket, the secret's bit length), gelu, silu (with
_piecewise), softmax, layernorm (LayerNorm and RMSNorm), embedding, argmax, sampling
(temperature, top-k, top-p), tanh.
"""

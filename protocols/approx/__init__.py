"""PUMA's nonlinear functions as MPC protocols, each beside its plaintext float twin."""

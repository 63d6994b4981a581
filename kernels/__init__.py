"""Triton kernels. Each is a trio sharing one name: kernels/<k>.py (kernel + autograd Function / functional),
tests/kernels/test_<k>.py (plain-PyTorch reference, odd shapes, per-dtype tolerances; runs on CPU with
TRITON_INTERPRET=1), kernels/bench_<k>.py (benchmark writing result rows)."""

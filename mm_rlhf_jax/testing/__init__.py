"""Test doubles only (the bundled tiny datasets are product code: see mm_rlhf_jax.data.synthetic).

multihost.py   a tiny decoder and inputs for the 2-process jax.distributed tests
"""

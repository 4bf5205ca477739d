"""Speculative decoding: proposers (n-gram prompt lookup, a draft model) and their configuration.

Proposals reach the scheduler as ``Request.spec_token_ids``; the target model verifies them in
its ordinary step (:mod:`pagoda.layers.rejection_sampler`), so a verify is one more kind of chunk.
"""

"""``memtune bench``: speed measurements whose numbers can be trusted.

Every bench runs its contenders in one process, interleaved batch by batch (the order rotating, so that
no contender always goes first), after a warm-up, with the thread count fixed, and reports each
contender's time relative to a baseline (= 100) with a bootstrap 95% confidence interval over the
paired batches. ``timing`` holds that protocol (pure: it takes callables); the benches build the
contenders.

- ``decode``: data-to-text decoding through ``generate()`` with the KV cache, tuned vs untuned.
"""

"""Forward-only perturbative methods: the antithetic engine, PGT (with SPSA and ES as settings), finite differences."""

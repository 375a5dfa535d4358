"""Energy-based learning: Equilibrium Propagation and Agnostic Equilibrium Propagation."""

"""Sparse Jacobians and Hessians (--sparse, --sparsity, jac sparsity): see command.py."""

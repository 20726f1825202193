"""Deployment helpers: lab certificates and keys, flower-superlink/supernode command lines."""

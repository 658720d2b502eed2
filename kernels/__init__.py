"""Triton kernels and their launchers (installed as fastformer.kernels).

Launchers take well-formed tensors (the functional ops in fastformer/ops reshape and validate) and
return new tensors; they never copy inputs. Set TRITON_INTERPRET=1 before importing to run them
on CPU tensors through Triton's interpreter.
"""

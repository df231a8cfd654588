"""`tfwarden devserver`: a TF-Serving-compatible model server for demos and tests.

It runs in its own process (it imports TensorFlow) and is never imported by the daemon.
"""

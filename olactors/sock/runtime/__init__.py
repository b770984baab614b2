"""Code that runs INSIDE sandboxes: stdlib only, never trio, never site-packages.

The worker bind-mounts this directory read-only at ``/runtime`` in every
sandbox root and starts ``python -I -S /runtime/server.py <json config>``.
"""

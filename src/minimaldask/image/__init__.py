"""Daemonless, emulation-free builder of the minimaldask multi-arch image."""

"""One module per DVC stage: each reads params and files, calls the pure code, writes outputs."""

"""Parts that exist only in development: the mail viewer, the learning platform's stand-in and
the benchmark's reference routes. `create_app` mounts each only when its setting asks for it."""

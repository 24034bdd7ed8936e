"""The HTTP edge: controllers, guards and problem+json; the only place besides app.py that imports litestar."""
